"""GAN metrics: FID, KID, precision/recall, Inception Score, PPL, with the official names and numbers.

Imports nothing from ``ada``. Typical use (``ada metrics`` and the training loop do exactly this)::

    import metrics

    specs = metrics.parse_metric_names("fid50k_full,kid50k_full")   # ValueError on a bad name
    try:
        net = metrics.load_feature_net(features_path, device=device)  # None -> standard Inception
    except metrics.FeatureNetUnavailable as err:                      # no weights: say why, once
        ...
    results = metrics.evaluate(specs, G, reals, feature_net=net, device=device,
                               cache_dir=metrics.default_cache_dir(), progress=True)
    for r in results:                    # one MetricResult per metric
        line = r.record(snapshot_pkl="network-snapshot-000400.pkl", kimg=400)
        # -> {"results": {"fid50k_full": 12.3}, "metric": "fid50k_full", "total_time": ...,
        #     "total_time_str": ..., "num_gpus": 1, "feature_net": ..., "snapshot_pkl": ...,
        #     "timestamp": ..., "kimg": 400}; append json.dumps(line) to metric-fid50k_full.jsonl

Names (see :mod:`metrics.names` for the grammar): fid{N}[_full], kid{N}[_full], pr{N}k{K}[_full] or
pr{N}_{K}[_full], is{N}, ppl[2]_{z|w}{full|end}[_{N}], with N like 50k or 200. Result keys are the
official ones: pr gives NAME_precision and NAME_recall, is gives NAME_mean and NAME_std.

Inputs:

- ``G``: the official StyleGAN2 generator interface (z_dim, c_dim, w_dim, num_ws, img_resolution,
  img_channels; ``G(z, c, truncation_psi=, noise_mode=)``, ``G.mapping(z, c)``,
  ``G.synthesis(ws, noise_mode=, force_fp32=)``), output in [-1, 1]. It is deep-copied and put in eval mode.
- ``reals``: a dataset with ``name`` (cache key), ``len`` and ``reals[i] -> (uint8 [C, H, W], label)``;
  labels for conditional G from ``reals.labels`` [N, c_dim] or ``reals.get_label(i)``.
  :class:`TensorImages` wraps a tensor for tests.
- Feature networks: :func:`load_feature_net` (``--features PATH`` TorchScript, or the standard
  Inception found via path, ``$ADA_INCEPTION_WEIGHTS`` or ``$ADA_CACHE_DIR``/``~/.cache/ada``,
  verified by SHA-256, read without running code). ``pr_feature_net`` optionally gives PR its own
  network (the official pr50k3 uses NVIDIA's VGG16, loadable with :func:`load_torchscript_features`);
  each result's ``feature_net`` names the network that produced it.
- ``xflip=True`` when G was trained on the reals and their mirror images: the legacy fid{N}, kid{N},
  pr{N} then compare against both, as the official legacy metrics do.
  PPL needs ``ppl_distance``: :func:`load_ppl_distance` (path or ``$ADA_PPL_NET``).

Differences from the official code, all deliberate: generated images are drawn from a seeded
generator (same z for every snapshot, lower noise between snapshots); one generator pass serves
all metrics on the same network; FID takes tr((S1 S2)^(1/2)) from a symmetric eigendecomposition
(the same quantity as scipy's sqrtm, accurate on singular covariances); PR distances in float32
(official: float16); without NVIDIA's vgg16.pt, PR uses the Inception features and PPL an
unweighted LPIPS-style distance, so those two numbers are not comparable to published ones.
"""

from .data import Generator, RealImages, TensorImages
from .evaluate import MetricResult, evaluate, format_time
from .feature_nets import (
    INCEPTION_NAME,
    FeatureNet,
    FeatureNetUnavailable,
    InceptionFeatures,
    TorchScriptFeatures,
    default_cache_dir,
    inception_from_state_dict,
    load_feature_net,
    load_inception,
    load_lpips_embedding,
    load_ppl_distance,
    load_torchscript_features,
    lpips_style_distance,
    lpips_style_embedding,
)
from .inception import FIDInceptionV3
from .names import MetricSpec, parse_metric_name, parse_metric_names

__all__ = [
    "INCEPTION_NAME",
    "FIDInceptionV3",
    "FeatureNet",
    "FeatureNetUnavailable",
    "Generator",
    "InceptionFeatures",
    "MetricResult",
    "MetricSpec",
    "RealImages",
    "TensorImages",
    "TorchScriptFeatures",
    "default_cache_dir",
    "evaluate",
    "format_time",
    "inception_from_state_dict",
    "load_feature_net",
    "load_inception",
    "load_lpips_embedding",
    "load_ppl_distance",
    "load_torchscript_features",
    "lpips_style_distance",
    "lpips_style_embedding",
    "parse_metric_name",
    "parse_metric_names",
]
