"""FSDP with accelerate (fsdp_version 2, ``fully_shard``) on 2 CPU processes over gloo, launched with the shipped
``configs/accelerate/fsdp.yaml``: full fine-tuning and LoRA give the same update as DDP within float tolerance, a
run stopped at a checkpoint and resumed under FSDP continues bit-identically to the uninterrupted run, and the
checkpoint's policy loads in a stock diffusers pipeline.

accelerate enables FSDP only on GPU-like devices (see tests/core/fsdp_cpu_launch.py, which lifts exactly that gate
for the FSDP runs here). The DDP reference is the same launch command without the lift: accelerate's real CPU
fallback, which must train as DDP and say so in a warning. The six 2-process runs go four, then two, at a time.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from .helpers import REPO, tiny_config, write_config

FSDP_CONFIG = os.path.join(REPO, "configs", "accelerate", "fsdp.yaml")
LIFT = os.path.join(REPO, "tests", "core", "fsdp_cpu_launch.py")
FSDP_LINE = "genalign: FSDP2 (fully_shard) shards policy"
FALLBACK_LINE = "genalign: warning: the launch asked for FSDP but accelerate runs MULTI_CPU"


def _start(cfg_path: str, port: int, fsdp: bool, log: str):
    target = [LIFT] if fsdp else ["-m", "genalign"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", FSDP_CONFIG, "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(port), *target, "train", cfg_path]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True)


def _wait(procs):
    for log, p in procs:
        try:
            rc = p.wait(timeout=900)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = "timeout"
        assert rc == 0, f"{log} ({rc}):\n" + open(log).read()[-4000:]


def _policy(run_dir: str, it: int, lora: bool):
    """The policy's weights (LoRA runs: plus the learnable reward's head, as ``head.*``) at checkpoint-``it``."""
    ck = os.path.join(run_dir, "checkpoints", f"checkpoint-{it}")
    if not lora:
        return load_file(os.path.join(ck, "transformer", "diffusion_pytorch_model.safetensors"))
    head = load_file(os.path.join(ck, "parts", "head.safetensors"))
    return {**load_file(os.path.join(ck, "pytorch_lora_weights.safetensors")), **{f"head.{k}": v for k, v in
                                                                                 head.items()}}


@pytest.fixture(scope="module")
def runs(tiny_sd3, tmp_path_factory):
    """Per mode (lora, full): DDP (accelerate's CPU fallback) and FSDP for 3 iterations with a checkpoint at 2, then
    a copy of the FSDP run cut back to checkpoint-2 and resumed to 3 under FSDP."""
    root = tmp_path_factory.mktemp("fsdp")
    over = dict(train__iterations=3, train__save_every=2, train__keep_checkpoints=0, train__rollout_batch_size=4,
                train__train_batch_size=2, train__num_threads=1)
    first, port = [], 29541
    for mode, rank in (("lora", 4), ("full", 0)):
        for kind in ("ddp", "fsdp"):
            cfg = tiny_config(tiny_sd3, str(root / f"{mode}_{kind}"), **over)
            cfg["model"]["lora"]["rank"] = rank
            if mode == "lora":  # a second trained part (a learnable reward's head, scored and trained every
                # iteration) and one evaluation item: the second process samples a padding item (FSDP forwards are
                # collectives)
                cfg["rewards"].append({"name": "tests.core.parts_for_tests:LearnedBrightness", "weight": 0.1})
                cfg["data"]["eval_seeds"] = [0]
            path = write_config(root / f"{mode}_{kind}.yaml", cfg)
            log = str(root / f"{mode}_{kind}.log")
            first.append((log, _start(path, port, kind == "fsdp", log)))
            port += 1
    _wait(first)
    second = []
    for mode in ("lora", "full"):
        src, dst = root / f"{mode}_fsdp", root / f"{mode}_resumed"
        shutil.copytree(src, dst)
        shutil.rmtree(dst / "checkpoints" / "checkpoint-3")  # stopped after the checkpoint at iteration 2
        rows = open(src / "metrics.jsonl").read().splitlines()[:2]
        (dst / "metrics.jsonl").write_text("\n".join(rows) + "\n")
        cfg = json.loads(json.dumps(__import__("yaml").safe_load(open(root / f"{mode}_fsdp.yaml"))))
        cfg["run"].update(output_dir=str(dst), resume=True)
        path = write_config(root / f"{mode}_resumed.yaml", cfg)
        log = str(root / f"{mode}_resumed.log")
        second.append((log, _start(path, port, True, log)))
        port += 1
    _wait(second)
    return root


def test_shipped_accelerate_config_selects_fsdp2():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    fsdp = load_config_from_file(FSDP_CONFIG)
    assert fsdp.distributed_type == DistributedType.FSDP
    assert int(fsdp.fsdp_config["fsdp_version"]) == 2
    assert not os.path.exists(os.path.join(REPO, "configs", "accelerate", "deepspeed_zero2.yaml"))  # refused below


def _stub(kind: str, fsdp_version: int = 2):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    return SimpleNamespace(distributed_type=DistributedType[kind], is_main_process=True, device=torch.device("cpu"),
                           state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=fsdp_version)))


def test_distributed_checks(tiny_sd3, tmp_path, monkeypatch, capsys):
    """One line for a requested FSDP/DeepSpeed that accelerate replaced; one-line errors for DeepSpeed, FSDP1 and EMA
    under FSDP (in-process, with a stand-in accelerator: the real fallback is checked by the runs below)."""
    from genalign.config import build_config
    from genalign.core.parts import check_distributed
    from genalign.core.phases import PartSpec
    from genalign.errors import ConfigError

    cfg = build_config(tiny_config(tiny_sd3, str(tmp_path / "run")))
    specs = {"policy": PartSpec(torch.nn.Linear(2, 2))}
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_distributed(_stub("MULTI_CPU"), cfg, specs)
    assert FALLBACK_LINE + " on this host (cpu)" in capsys.readouterr().out
    check_distributed(_stub("FSDP"), cfg, specs)  # FSDP as asked: silent
    assert capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match="FSDP version 2 only"):
        check_distributed(_stub("FSDP", 1), cfg, specs)
    ema = build_config(tiny_config(tiny_sd3, str(tmp_path / "run"), train__ema={"decay": 0.9}))
    with pytest.raises(ConfigError, match=r"EMA is not supported under FSDP \(part\(s\) \['policy'\]\)"):
        check_distributed(_stub("FSDP"), ema, specs)
    check_distributed(_stub("MULTI_CPU"), ema, specs)  # EMA under DDP is fine
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    check_distributed(_stub("MULTI_CPU"), cfg, specs)
    assert "the launch asked for DEEPSPEED but accelerate runs MULTI_CPU" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="does not run under DeepSpeed"):
        check_distributed(_stub("DEEPSPEED"), cfg, specs)


def test_fallback_to_ddp_is_not_silent(runs):
    for mode in ("lora", "full"):
        ddp, fsdp = (open(runs / f"{mode}_{k}.log").read() for k in ("ddp", "fsdp"))
        assert FALLBACK_LINE in ddp and FSDP_LINE not in ddp
        assert FSDP_LINE in fsdp and FALLBACK_LINE not in fsdp
        assert (FSDP_LINE + (", head" if mode == "lora" else "") + " over 2 processes") in fsdp


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fsdp_update_matches_ddp(runs, tiny_sd3, mode):
    lora = mode == "lora"
    base = {} if lora else load_file(os.path.join(tiny_sd3, "transformer", "diffusion_pytorch_model.safetensors"))
    for it in (2, 3):
        d, f = _policy(str(runs / f"{mode}_ddp"), it, lora), _policy(str(runs / f"{mode}_fsdp"), it, lora)
        assert d.keys() == f.keys() and len(d) > 0
        # the update itself (LoRA: B starts at zero; full: the change from the base weights)
        policy = [k for k in d if not k.startswith("head.")]
        moved = max(float((d[k] - base.get(k, torch.zeros_like(d[k]))).abs().max()) for k in policy if not lora or
                    "lora_B" in k)
        diff = max(float((d[k] - f[k]).abs().max()) for k in policy)
        print(f"{mode} checkpoint-{it}: largest update {moved:.3e}, largest FSDP-DDP difference {diff:.3e}")
        assert moved > 1e-3
        assert diff < 5e-3 * moved  # reduce-scatter vs all-reduce summation order only
        if lora:  # the head (lr 5e-2 from LearnedBrightness's seeded init) trained, and matches too
            torch.manual_seed(1)
            init = torch.nn.Linear(3, 1).weight.detach()
            assert float((d["head.weight"] - init).abs().max()) > 1e-3
            for k in ("head.weight", "head.bias"):
                torch.testing.assert_close(f[k], d[k], atol=1e-6, rtol=1e-5)
    rows = [[json.loads(line) for line in open(runs / f"{mode}_{k}" / "metrics.jsonl")] for k in ("ddp", "fsdp")]
    assert [r["optimizer_step"] for r in rows[0]] == [r["optimizer_step"] for r in rows[1]] == [1, 2, 3]
    assert rows[0][0]["reward_mean"] == pytest.approx(rows[1][0]["reward_mean"], abs=1e-6)  # same first samples


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fsdp_resume_continues_exactly(runs, mode):
    lora = mode == "lora"
    assert "resumed from" in open(runs / f"{mode}_resumed.log").read()
    a, b = _policy(str(runs / f"{mode}_fsdp"), 3, lora), _policy(str(runs / f"{mode}_resumed"), 3, lora)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck = runs / f"{mode}_fsdp" / "checkpoints" / "checkpoint-2"
    opt = torch.load(ck / "optimizer.bin", weights_only=True)  # the full (gathered) optimiser state, by name
    if lora:
        trainable = {"transformer." + n.replace(".default.", ".") for n in opt["state"]}
        assert trainable == {k for k in a if not k.startswith("head.")}
        head = torch.load(ck / "optimizer_1.bin", weights_only=True)
        assert set(head["state"]) == {"weight", "bias"}
    else:
        from diffusers import SD3Transformer2DModel

        names = {n for n, _ in SD3Transformer2DModel.from_pretrained(str(ck / "transformer")).named_parameters()}
        assert set(opt["state"]) == names
    assert all(float(s["step"]) == 2 and s["exp_avg"].shape == s["exp_avg_sq"].shape for s in opt["state"].values())
    last = [json.loads(line) for line in open(runs / f"{mode}_resumed" / "metrics.jsonl")][-1]
    ref = [json.loads(line) for line in open(runs / f"{mode}_fsdp" / "metrics.jsonl")][-1]
    assert last["step"] == 3 and last["loss"] == ref["loss"] and last["reward_mean"] == ref["reward_mean"]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fsdp_checkpoint_loads_in_stock_diffusers(runs, tiny_sd3, mode):
    from diffusers import DiffusionPipeline, SD3Transformer2DModel

    ck = str(runs / f"{mode}_fsdp" / "checkpoints" / "checkpoint-3")
    saved = _policy(str(runs / f"{mode}_fsdp"), 3, mode == "lora")
    if mode == "lora":
        pipe = DiffusionPipeline.from_pretrained(tiny_sd3, text_encoder_3=None, tokenizer_3=None)
        pipe.load_lora_weights(ck)
        live = {n: p for n, p in pipe.transformer.named_parameters() if "lora_B" in n}
        assert live and all(float(p.detach().abs().max()) > 0 for p in live.values())
        name = next(iter(live))
        key = "transformer." + name.replace(".default_0", "").replace(".default", "")
        assert torch.equal(live[name].detach(), saved[key])
    else:
        t = SD3Transformer2DModel.from_pretrained(os.path.join(ck, "transformer"))
        sd = t.state_dict()
        assert sd.keys() == saved.keys() and all(torch.equal(sd[k], saved[k]) for k in sd)
        pipe = DiffusionPipeline.from_pretrained(tiny_sd3, transformer=t, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        img = pipe(prompt=["a red cube"], num_inference_steps=2, guidance_scale=3.0, height=16, width=16,
                   max_sequence_length=8, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 3, 16, 16) and torch.isfinite(img).all()
