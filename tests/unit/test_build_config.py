"""The typed build config: the shipped configs parse; typos, wrong types and impossible combinations name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from model_export.config import BuildConfig, ConfigError, apply_overrides, load_build_config, parse_build_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def raw(name: str = "tiny-smoke.toml") -> dict:
    return tomllib.loads((CONFIGS / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["korquad-e5-small.toml", "tiny-smoke.toml"])
def test_shipped_configs_parse(name: str) -> None:
    cfg = load_build_config(CONFIGS / name)
    assert isinstance(cfg, BuildConfig)
    assert cfg.data.train_articles == "0:112" and cfg.data.test_articles == "112:140"


def test_shipped_config_values_arrive_typed() -> None:
    cfg = load_build_config(CONFIGS / "korquad-e5-small.toml")
    assert cfg.export.shipped == ["int8"] and cfg.export.int8_method == "static"
    assert cfg.export.calibration_windows == 128
    assert cfg.train.learning_rate == 1e-4 and cfg.train.negatives == 0.5  # type: ignore[attr-defined]
    assert cfg.train.freeze_word_embeddings is False  # type: ignore[attr-defined]
    assert cfg.calibrate.enabled and cfg.calibrate.fit_articles == "0:100" and cfg.calibrate.dev_articles == "100:112"
    assert cfg.calibrate.logits == "served" and cfg.validate_.tolerance_overrides() == {}
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
        ("calibrate.logits", "pytorch", "'served' or 'checkpoint'"),
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


def test_calibration_folds_are_none_or_several() -> None:
    cfg = raw()
    cfg.setdefault("calibrate", {})["folds"] = 1
    with pytest.raises(ConfigError, match=r"calibrate\.folds is 0"):
        parse_build_config(cfg)
    cfg["calibrate"]["folds"] = 4
    assert parse_build_config(cfg).calibrate.folds == 4


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
