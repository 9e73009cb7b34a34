"""The networks metrics look through: where their weights come from and how they are called.

A feature network maps uint8 images [N, 3, H, W] to feature vectors [N, D]. Two kinds exist:

- :class:`InceptionFeatures`: our :class:`~metrics.inception.FIDInceptionV3` with the standard
  TF-ported weights. The file is found (explicit path, ``$ADA_INCEPTION_WEIGHTS``, the cache dir),
  identified by its SHA-256 and read without running any code from it.
- :class:`TorchScriptFeatures`: any TorchScript module the user gives (``--features PATH``), for
  offline machines and domain-specific evaluation. Its program runs, so it must be a file the user
  trusts, exactly like a checkpoint.

When no network can be had, :class:`FeatureNetUnavailable` says why and how to provide one; the
training loop catches it, says so once and trains on.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .inception import FIDInceptionV3, state_dict_from_nvidia_names
from .torchscript_tensors import read_torchscript_tensors

WEIGHTS_ENV = "ADA_INCEPTION_WEIGHTS"
CACHE_ENV = "ADA_CACHE_DIR"
PPL_NET_ENV = "ADA_PPL_NET"
INCEPTION_NAME = "inception-2015-12-05"


class FeatureNetUnavailable(ValueError):
    """No usable feature network: the message says why and how to provide one."""


@dataclass(frozen=True)
class WeightsFile:
    file_name: str
    sha256: str
    url: str
    layout: str  # "state_dict" (pytorch-fid names) or "nvidia_torchscript"


PYTORCH_FID_WEIGHTS = WeightsFile(
    file_name="pt_inception-2015-12-05-6726825d.pth",
    sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
    layout="state_dict",
)
NVIDIA_WEIGHTS = WeightsFile(
    file_name="inception-2015-12-05.pt",
    sha256="f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
    url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
    layout="nvidia_torchscript",
)
# Both hold the same TF-ported weights; the first is the one we download.
KNOWN_INCEPTION_FILES: tuple[WeightsFile, ...] = (PYTORCH_FID_WEIGHTS, NVIDIA_WEIGHTS)


def default_cache_dir() -> Path:
    """``$ADA_CACHE_DIR``, else ``~/.cache/ada``: weights and cached real-image statistics live here."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ada")


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class FeatureNet(nn.Module):
    """uint8 images [N, 3, H, W] -> float features [N, D]; ``name`` identifies it in caches and results."""

    name: str
    has_logits = False

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits for the Inception Score; only the Inception network has them."""
        raise FeatureNetUnavailable(self.no_logits_message())

    def no_logits_message(self) -> str:
        return (f"the Inception Score needs the Inception network's class logits; {self.name} has none "
                "(drop --features to use Inception)")


class InceptionFeatures(FeatureNet):
    has_logits = True

    def __init__(self, net: FIDInceptionV3, name: str = INCEPTION_NAME):
        super().__init__()
        self.net = net
        self.name = name
        self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.logits(features)


class TorchScriptFeatures(FeatureNet):
    def __init__(self, module: torch.jit.ScriptModule, name: str, flag: str = "--features"):
        super().__init__()
        self.module = module
        self.name = name
        self.flag = flag
        self.eval()
        # NVIDIA's metric networks (inception-2015-12-05.pt, vgg16.pt) give features on request.
        self.kwargs = {"return_features": True} if _forward_takes(module, "return_features") else {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.module(images, **self.kwargs)
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise FeatureNetUnavailable(
                f"{self.flag} network {self.name} returned {shape} for {images.shape[0]} images; "
                "it must map uint8 images [N, 3, H, W] to features [N, D]"
            )
        return out.to(torch.float32)


def _forward_takes(module: torch.jit.ScriptModule, argument: str) -> bool:
    return any(a.name == argument for a in module.forward.schema.arguments)


def inception_from_state_dict(
    state_dict: dict[str, torch.Tensor], name: str = INCEPTION_NAME
) -> InceptionFeatures:
    """Inception with the given pytorch-fid-named tensors (strict: every key and shape must match)."""
    with torch.device("meta"):  # no point initialising 24M parameters that are overwritten at once
        net = FIDInceptionV3()
    net.load_state_dict(state_dict, assign=True)
    return InceptionFeatures(net, name=name)


def _not_found_message(cache: Path) -> str:
    w = PYTORCH_FID_WEIGHTS
    return (
        f"no Inception weights found (no ${WEIGHTS_ENV}, nothing in {cache}); download {w.url} and put "
        f"{w.file_name} in {cache} or set {WEIGHTS_ENV}=PATH, or give --features PATH "
        "(a TorchScript feature network)"
    )


def find_inception_weights(path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The weights file: ``path``, else ``$ADA_INCEPTION_WEIGHTS``, else a known name in the cache dir."""
    origin = "Inception weights file"
    if path is None and os.environ.get(WEIGHTS_ENV):
        path, origin = os.environ[WEIGHTS_ENV], f"${WEIGHTS_ENV}:"
    if path is not None:
        if not Path(path).is_file():
            raise FeatureNetUnavailable(f"{origin} {path} does not exist")
        return Path(path)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for known in KNOWN_INCEPTION_FILES:
        candidate = cache / known.file_name
        if candidate.is_file():
            return candidate
    raise FeatureNetUnavailable(_not_found_message(cache))


def identify_weights(path: str | Path) -> WeightsFile:
    """The known weights file whose SHA-256 ``path`` has; FeatureNetUnavailable if it is none of them."""
    digest = sha256_of(path)
    for known in KNOWN_INCEPTION_FILES:
        if digest == known.sha256:
            return known
    expected = " or ".join(f"{k.sha256[:8]}... ({k.file_name})" for k in KNOWN_INCEPTION_FILES)
    raise FeatureNetUnavailable(
        f"Inception weights {path} have SHA-256 {digest[:8]}..., expected {expected}; "
        "the file is damaged or not the standard one: download it again"
    )


def download_inception_weights(cache_dir: str | Path | None = None, timeout: float = 30.0) -> Path:
    """Download pytorch-fid's weights into the cache dir with a progress bar, verifying the SHA-256."""
    w = PYTORCH_FID_WEIGHTS
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / w.file_name
    fd, tmp_name = tempfile.mkstemp(dir=cache, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as tmp, urllib.request.urlopen(w.url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=w.file_name) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    tmp.write(chunk)
                    bar.update(len(chunk))
        identify_weights(tmp_name)
    except (urllib.error.URLError, OSError) as err:
        os.unlink(tmp_name)
        raise FeatureNetUnavailable(
            f"cannot download {w.url} ({err}); fetch it on a machine with internet access and put "
            f"{w.file_name} in {cache} or set {WEIGHTS_ENV}=PATH"
        ) from None
    except FeatureNetUnavailable:
        os.unlink(tmp_name)
        raise
    os.replace(tmp_name, target)
    return target


def load_inception(
    weights: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    allow_download: bool = False,
) -> InceptionFeatures:
    """The standard FID Inception with verified weights, read without running code from the file."""
    try:
        path = find_inception_weights(weights, cache_dir)
    except FeatureNetUnavailable:
        if weights is not None or os.environ.get(WEIGHTS_ENV) or not allow_download:
            raise
        path = download_inception_weights(cache_dir)
    known = identify_weights(path)
    if known.layout == "state_dict":
        return inception_from_state_dict(torch.load(path, map_location="cpu", weights_only=True)).to(device)
    try:
        # Read after the layout of NVIDIA's port as published third-party code describes it; the
        # file itself was not available to check against, so a mismatch ends here, in one line.
        state_dict = state_dict_from_nvidia_names(read_torchscript_tensors(path))
        return inception_from_state_dict(state_dict).to(device)
    except (ValueError, RuntimeError) as err:
        raise FeatureNetUnavailable(
            f"cannot map the tensors of {path} onto the FID Inception ({_first_line(err)}); use "
            f"{PYTORCH_FID_WEIGHTS.file_name} from {PYTORCH_FID_WEIGHTS.url} instead"
        ) from None


def _first_line(err: BaseException) -> str:
    """The first line of an error's message (torch's run over several), or its type's name.
    (`ada.errors.one_line` does this for `ada`; metrics import nothing from it.)"""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _load_script(path: str | Path, device: str | torch.device, flag: str) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise FeatureNetUnavailable(f"{flag} file {path} does not exist")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        message = f"{flag} file {path} is not a TorchScript module ({_first_line(err)})"
        raise FeatureNetUnavailable(message) from None


def load_torchscript_features(
    path: str | Path, *, device: str | torch.device = "cpu", flag: str = "--features"
) -> TorchScriptFeatures:
    """A user's TorchScript feature network (``--features PATH``, ``--pr-net PATH``; ``flag`` names the
    option in messages). Its program runs: trust the file."""
    module = _load_script(path, device, flag)
    return TorchScriptFeatures(module, name=f"{Path(path).stem}-{sha256_of(path)[:8]}", flag=flag)


def load_feature_net(
    features: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    inception_weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    allow_download: bool = False,
) -> FeatureNet:
    """``--features PATH`` when given, else the standard Inception (see :func:`load_inception`)."""
    if features is not None:
        return load_torchscript_features(features, device=device)
    return load_inception(inception_weights, device=device, cache_dir=cache_dir,
                          allow_download=allow_download)


PPLDistance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Embedding = Callable[[torch.Tensor], torch.Tensor]


def lpips_style_embedding(net: Callable[..., object]) -> Embedding:
    """Image batches (float, [0, 255], [N, 3, H, W]) -> vectors [N, D] whose squared L2 distance is the
    perceptual distance of :func:`lpips_style_distance`. Embedding once lets a caller compare many
    images with one fixed target (the projector) without running the network on the target again.
    """
    if isinstance(net, torch.jit.ScriptModule) and _forward_takes(net, "return_lpips"):
        return lambda images: net(images, resize_images=False, return_lpips=True)

    def unweighted(images: torch.Tensor) -> torch.Tensor:
        outs = net(images)
        parts = []
        for f in (outs,) if isinstance(outs, torch.Tensor) else outs:
            f = f / (f.norm(dim=1, keepdim=True) + 1e-10)
            # Dividing by sqrt(positions) turns the sum of squares into a mean over positions.
            positions = f[0, 0].numel()
            parts.append(f.flatten(1) / positions**0.5)
        return torch.cat(parts, dim=1)
    return unweighted


def lpips_style_distance(net: Callable[..., object]) -> PPLDistance:
    """Squared perceptual distance between image batches (float, [0, 255], [N, 3, H, W]) -> [N].

    A network with a ``return_lpips`` argument (NVIDIA's vgg16.pt) returns LPIPS embeddings whose
    squared L2 distance is LPIPS itself, exactly what the official PPL uses. Any other network's
    outputs (one tensor or a tuple of tensors, [N, C] or [N, C, H, W]) are unit-normalised over
    channels and their squared differences summed over channels, averaged over positions and summed
    over outputs: LPIPS without its learned per-channel weights.
    """
    embed = lpips_style_embedding(net)
    return lambda a, b: (embed(a) - embed(b)).square().sum(dim=1)


def ppl_unavailable_message() -> str:
    return ("PPL needs an LPIPS network and none is shipped: give a TorchScript file (NVIDIA's "
            f"stylegan2-ada-pytorch metrics/vgg16.pt reproduces official numbers) via {PPL_NET_ENV}=PATH")


def load_lpips_embedding(
    path: str | Path, *, device: str | torch.device = "cpu", flag: str = "--lpips-net"
) -> Embedding:
    """:func:`lpips_style_embedding` of a TorchScript network (``flag`` names the option). Its program runs."""
    return lpips_style_embedding(_load_script(path, device, flag))


def load_ppl_distance(path: str | Path | None = None, *, device: str | torch.device = "cpu") -> PPLDistance:
    """The PPL distance from a TorchScript network: ``path``, else ``$ADA_PPL_NET``. Its program runs."""
    path = path or os.environ.get(PPL_NET_ENV) or None
    if path is None:
        raise FeatureNetUnavailable(ppl_unavailable_message())
    return lpips_style_distance(_load_script(path, device, "PPL network"))
