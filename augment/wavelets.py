"""Wavelet low-pass filters and the four-band filter bank of the image-space filter.

The taps are the published Daubechies symlet coefficients (orthonormal: they sum to sqrt(2) and
are orthogonal to their own even shifts). ADA uses sym6 to anti-alias the geometric warp and sym2
to split an image into frequency bands.
"""

import numpy as np

SYM2 = (
    -0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025,
)

SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)

# Expected share of image power per band (lowest band first), for a 1/f power spectrum. The
# image filter renormalises its gains with these weights so that amplifying one band does not
# change the image's overall energy.
BAND_POWER = (10 / 13, 1 / 13, 1 / 13, 1 / 13)


def band_filters(taps: tuple[float, ...] = SYM2, levels: int = 3) -> np.ndarray:
    """Zero-phase filters that split a 1-D signal into `levels + 1` octave bands.

    Row 0 is the lowest band, row `levels` the finest. The rows sum to a unit impulse, so
    filtering with all gains equal to 1 is the identity. Built as an undecimated ("a trous")
    wavelet cascade: at each level the bands found so far are dilated by 2 and smoothed with the
    half-band low-pass, and the level's half-band high-pass becomes a new band.
    """
    lo = np.asarray(taps, dtype=np.float64)
    hi = lo * (-1.0) ** np.arange(lo.size)
    # Autocorrelations halved: zero-phase half-band pair with lo2 + hi2 = impulse.
    lo2 = np.convolve(lo, lo[::-1]) / 2
    hi2 = np.convolve(hi, hi[::-1]) / 2
    bank = np.zeros((levels + 1, 1))
    bank[0, 0] = 1.0
    for level in range(1, levels + 1):
        dilated = np.zeros((levels + 1, 2 * bank.shape[1] - 1))
        dilated[:, ::2] = bank
        bank = np.stack([np.convolve(row, lo2) for row in dilated])
        start = (bank.shape[1] - hi2.size) // 2
        bank[level, start:start + hi2.size] += hi2
    return bank
