"""The typed build config: the shipped configs parse; typos, wrong types and impossible combinations name the key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from model_export.__main__ import main
from model_export.config import (
    BuildConfig,
    ConfigError,
    apply_overrides,
    check_splits,
    load_build_config,
    parse_build_config,
)
from tests.support.tiny_model import KORQUAD_DEV

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def raw(name: str = "tiny-smoke.toml") -> dict:
    return tomllib.loads((CONFIGS / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["korquad-e5-small.toml", "tiny-smoke.toml"])
def test_shipped_configs_parse(name: str) -> None:
    cfg = load_build_config(CONFIGS / name)
    assert isinstance(cfg, BuildConfig)
    # the shipped recipe leaves 100-111 out of training to calibrate on (docs/calibration.md)
    assert cfg.data.train_articles == "0:100" and cfg.data.test_articles == "112:140"
    assert cfg.calibrate.dev_articles == "100:112"


def test_shipped_config_values_arrive_typed() -> None:
    cfg = load_build_config(CONFIGS / "korquad-e5-small.toml")
    assert cfg.export.shipped == ["int8"] and cfg.export.int8_method == "static"
    assert cfg.export.calibration_windows == 128
    assert cfg.train.learning_rate == 1e-4 and cfg.train.negatives == 0.5  # type: ignore[attr-defined]
    assert cfg.train.freeze_word_embeddings is False  # type: ignore[attr-defined]
    assert cfg.calibrate.enabled and cfg.calibrate.metric == "korquad" and cfg.validate_.tolerance_overrides() == {}
    assert cfg.work_dir == "runs/korquad-e5-small"
    assert cfg.prune.enabled and cfg.decode.trim_suffixes == "learn" and cfg.windows.max_seq_length == 384
    tiny = load_build_config(CONFIGS / "tiny-smoke.toml")
    assert tiny.validate_.tolerance_overrides() == {
        "int8": {"atol": 0.1, "min_argmax_agreement": 0.0},
        "fp16": {"atol": 0.01, "min_argmax_agreement": 0.0},
    }


@pytest.mark.parametrize(
    ("section", "key"),
    [(None, "bundle_dri"), ("train", "learnig_rate"), ("export", "variant"), ("validate", "max_exampels")],
)
def test_unknown_keys_are_rejected_by_name(section: str | None, key: str) -> None:
    cfg = raw()
    (cfg if section is None else cfg[section])[key] = 1
    with pytest.raises(ConfigError) as e:
        parse_build_config(cfg, "tiny-smoke.toml")
    where = key if section is None else f"{section}.{key}"
    assert f"{where}: unknown key" in str(e.value)


@pytest.mark.parametrize(
    ("path", "value", "reason"),
    [
        ("windows.doc_stride", "32", "valid integer"),
        ("train.max_steps", 4.5, "valid integer"),
        ("export.variants", ["fp32", "int4"], "'fp32', 'fp16' or 'int8'"),
        ("prune.enabled", "yes", "valid boolean"),
        ("evaluate.batch_size", 0, "greater than or equal to 1"),
        ("calibrate.dev_articles", 100, "valid string"),
        ("calibrate.metric", "bleu", "'squad' or 'korquad'"),
    ],
)
def test_wrong_types_are_rejected_by_name(path: str, value: object, reason: str) -> None:
    cfg = raw()
    section, key = path.split(".")
    cfg.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError) as e:
        parse_build_config(cfg)
    assert path in str(e.value) and reason in str(e.value)


def test_shipping_a_variant_that_is_not_built_is_rejected() -> None:
    cfg = raw()
    cfg["export"]["variants"] = ["fp32"]
    with pytest.raises(ConfigError, match=r"bundle_variants \['int8'\] are not in variants"):
        parse_build_config(cfg)


@pytest.mark.parametrize("key", ["fit_articles", "folds", "logits", "margin"])
def test_the_removed_calibration_keys_are_refused_by_name(key: str) -> None:
    """The separate calibration models (fit_articles, folds) and their logits' source went with the new design: a
    config that still sets them asks for something the build no longer does."""
    cfg = raw("korquad-e5-small.toml")
    cfg["calibrate"][key] = {"fit_articles": "0:100", "folds": 4, "logits": "served", "margin": True}[key]
    with pytest.raises(ConfigError, match=rf"calibrate\.{key}: unknown key"):
        parse_build_config(cfg)


def test_hf_base_needs_a_path() -> None:
    cfg = raw()
    del cfg["base"]["path"]
    with pytest.raises(ConfigError, match=r"base\.kind 'hf' needs base\.path"):
        parse_build_config(cfg)


def test_overrides_parse_as_toml_then_validate() -> None:
    cfg = parse_build_config(apply_overrides(raw(), ["train.max_steps=3", "export.max_bundle_mb=0.5", "name=x y"]))
    assert cfg.train.max_steps == 3 and cfg.export.max_bundle_mb == 0.5 and cfg.name == "x y"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(raw(), ["train.max_steps"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['data.test_articles="500:502"'], "'500:502' selects none of the 140 articles"),
        (['data.test_articles="90:140"'], "data.train_articles and data.test_articles share articles 90:100"),
        # the calibration slice: never trained on, never the test split, and two articles at least
        (['calibrate.dev_articles="95:105"'], "data.train_articles and calibrate.dev_articles share articles 95:100"),
        (['calibrate.dev_articles="110:114"'], "calibrate.dev_articles and data.test_articles share articles 112:114"),
        (['calibrate.dev_articles="100:101"'], "calibrate.dev_articles '100:101' holds one article"),
        (['calibrate.dev_articles="100,100"'], "calibrate.dev_articles '100,100' holds one article"),
        (['calibrate.dev_articles="200:210"'], "'200:210' selects none of the 140 articles"),
        (['data.file="nope.json"'], "No such file"),
    ],
)
def test_article_ranges_are_checked_against_the_data_before_any_training(overrides: list[str], message: str) -> None:
    cfg = parse_build_config(
        apply_overrides(raw(), [f'data.file="{KORQUAD_DEV}"', "calibrate.enabled=true", *overrides])
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_splits(cfg)


def test_a_calibration_slice_that_is_off_is_not_checked() -> None:
    """calibrate.enabled = false: its articles are read by nothing, so they may overlap the training articles."""
    off = ['calibrate.dev_articles="0:1"']
    check_splits(parse_build_config(apply_overrides(raw(), [f'data.file="{KORQUAD_DEV}"', *off])))
    with pytest.raises(ConfigError, match=r"data\.train_articles and calibrate\.dev_articles share articles 0:1"):
        check_splits(
            parse_build_config(apply_overrides(raw(), [f'data.file="{KORQUAD_DEV}"', *off, "calibrate.enabled=true"]))
        )


@pytest.mark.parametrize("name", ["korquad-e5-small.toml", "tiny-smoke.toml"])
def test_the_shipped_configs_keep_the_test_split_apart(name: str) -> None:
    check_splits(parse_build_config(apply_overrides(raw(name), [f'data.file="{KORQUAD_DEV}"'])))


def test_build_command_refuses_a_missing_config_or_a_spoiled_split_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: cannot read it: No such file or directory" in capsys.readouterr().err
    overrides = ["--set", f'data.file="{KORQUAD_DEV}"', "--set", 'data.test_articles="0:5"']
    assert main(["build", str(CONFIGS / "tiny-smoke.toml"), "--work-dir", str(tmp_path / "w"), *overrides]) == 2
    assert "data.train_articles and data.test_articles share articles 0:5" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()  # refused before the base import or any training


def test_a_sweep_on_the_test_split_or_on_its_own_fit_articles_is_refused() -> None:
    cfg = parse_build_config(apply_overrides(raw(), [f'data.file="{KORQUAD_DEV}"']))
    with pytest.raises(ConfigError, match=r"sweep\.dev_articles and data\.test_articles share articles 112:114"):
        check_splits(cfg, {"sweep": ("0:100", "100:114")})
    with pytest.raises(ConfigError, match=r"sweep\.fit_articles and sweep\.dev_articles share articles 90:100"):
        check_splits(cfg, {"sweep": ("0:100", "90:112")})
    check_splits(cfg, {"sweep": ("0:100", "100:112")})  # configs/sweep-korquad.toml's
