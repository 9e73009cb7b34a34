"""`ada metrics` with the precision/recall network of one's choice: the output names each metric's network."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ada.cli import main
from ada.evaluation import format_results
from metrics import MetricResult
from tests._tiny import save_generator, tiny_generator
from tests.conftest import write_images


class MeanColour(nn.Module):
    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        # NVIDIA's vgg16.pt takes return_features=True; the loader passes it where the network has it.
        assert return_features
        x = images.float() / 255
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


class Pooled(nn.Module):
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(images.float() / 255, 4).flatten(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics-cli")
    write_images(tmp / "data", 24, 16, mode="RGB")
    torch.jit.script(MeanColour()).save(str(tmp / "vgg-standin.pt"))
    torch.jit.script(Pooled()).save(str(tmp / "pooled.pt"))
    save_generator(tiny_generator(res=16), tmp / "G.pt")
    return tmp


def run_metrics(capsys, setup, *extra):
    main(["metrics", "--network", str(setup / "G.pt"), "--data", str(setup / "data"),
          "--features", str(setup / "pooled.pt"), *extra])
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_pr_net_end_to_end(capsys, setup):
    lines = run_metrics(capsys, setup, "--metrics", "pr24_3,fid24", "--pr-net", str(setup / "vgg-standin.pt"))
    by_metric = {line["metric"]: line for line in lines}
    assert by_metric["pr24_3"]["feature_net"].startswith("vgg-standin-")
    assert by_metric["fid24"]["feature_net"].startswith("pooled-")
    assert set(by_metric["pr24_3"]["results"]) == {"pr24_3_precision", "pr24_3_recall"}
    # Without --pr-net, precision/recall says it ran on the main feature network.
    (line,) = run_metrics(capsys, setup, "--metrics", "pr24_3")
    assert line["feature_net"].startswith("pooled-")


def test_a_bad_pr_net_is_one_line_naming_the_option(capsys, setup, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(SystemExit) as exit_info:
        run_metrics(capsys, setup, "--metrics", "pr24_3", "--pr-net", str(tmp_path / "junk.pt"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --pr-net file") and "not a TorchScript module" in err and "\n" not in err


def test_console_line_names_each_metrics_network():
    results = [MetricResult("fid50k_full", {"fid50k_full": 12.25}, 1.0, feature_net="inception-2015-12-05"),
               MetricResult("pr50k3_full", {"pr50k3_full_precision": 0.5, "pr50k3_full_recall": 0.25}, 1.0,
                            feature_net="vgg16-0123abcd")]
    assert format_results(results) == ("fid50k_full 12.25 [inception-2015-12-05]  "
                                       "pr50k3_full_precision 0.5 pr50k3_full_recall 0.25 [vgg16-0123abcd]")


def test_mirror_adds_the_flips_to_the_legacy_metrics_only(capsys, setup):
    def results(*extra):
        lines = run_metrics(capsys, setup, "--metrics", "fid48,fid48_full", *extra)
        return {line["metric"]: line["results"][line["metric"]] for line in lines}

    plain, mirrored = results(), results("--mirror", "1")
    assert mirrored["fid48_full"] == plain["fid48_full"]  # the primary metric drops the training x-flips
    assert mirrored["fid48"] != plain["fid48"]  # the legacy one compares against 24 images and 24 mirrors
