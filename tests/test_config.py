import pytest

from tfmm.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config, save_config


def test_defaults_are_the_documented_ones():
    cfg = RunConfig()
    assert cfg.model.fusion == "concat"
    assert cfg.model.image_encoder == "vgg16"
    assert cfg.model.text_encoder == "minilm"
    assert cfg.train.strategy == "auto"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ModelConfig(fusion="cat"), "fusion must be one of ['concat', 'gated', 'mean', 'sum']; received 'cat'"),
        (lambda: ModelConfig(dropout=1.5), "dropout must be in [0, 1); received 1.5"),
        (lambda: DataConfig(image_size=0), "image_size must be > 0; received 0"),
        (lambda: DataConfig(sequence_length=2), "sequence_length must be >= 3"),
        (lambda: TrainConfig(strategy="tpu"), "received 'tpu'"),
        (lambda: TrainConfig(epochs=0), "epochs must be > 0; received 0"),
        (lambda: TrainConfig(encoder_lr_scale=0), "encoder_lr_scale must be > 0; received 0"),
        (lambda: ModelConfig(text_dtype="int8"), "text_dtype must be one of"),
        (lambda: ModelConfig(unfreeze_image_blocks=-1), "unfreeze_image_blocks must be >= 0; received -1"),
        (lambda: ModelConfig(text_lora_rank=-2), "text_lora_rank must be >= 0; received -2"),
        (lambda: DataConfig(data_format="xls"), "data_format must be one of"),
        (lambda: DataConfig(text_from="ocr"), "text_from must be one of ['filename', 'sidecar']; received 'ocr'"),
        (lambda: DataConfig(label_depth=0), "label_depth must be > 0; received 0"),
    ],
)
def test_invalid_values_name_argument_and_value(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value)


def test_replace_and_unknown_fields():
    cfg = RunConfig().replace(model={"fusion": "sum"}, train={"epochs": 2})
    assert (cfg.model.fusion, cfg.train.epochs) == ("sum", 2)
    assert RunConfig().model.fusion == "concat"  # frozen: the original is unchanged
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['fuse'\]"):
        RunConfig().replace(model={"fuse": "sum"})
    with pytest.raises(ValueError, match="unknown config section"):
        RunConfig().replace(optimizer={})


def test_yaml_round_trip(tmp_path):
    cfg = RunConfig().replace(data={"image_size": 64}, model={"fusion": "gated", "freeze_text": True})
    path = str(tmp_path / "config.yaml")
    save_config(cfg, path)
    assert load_config(path) == cfg


def test_load_config_json_and_errors(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"train": {"epochs": 3}}')
    assert load_config(str(path)).train.epochs == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  fusion: cat\n")
    with pytest.raises(ValueError, match=r"bad.yaml: fusion must be one of"):
        load_config(str(bad))
    code = tmp_path / "code.yaml"
    code.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(Exception) as e:
        load_config(str(code))
    assert "python/object" in str(e.value) or "constructor" in str(e.value)
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))
