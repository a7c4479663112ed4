import pytest

from calm_rag.config import (CalmConfig, ConfigError, GenerateConfig, PairsConfig, SelfRagConfig, TrainConfig,
                             load_yaml, override)


def test_defaults_valid():
    assert GenerateConfig().n == 3  # the paper's samples per language
    assert CalmConfig().languages == ("en", "zh", "fr", "de", "it", "ja")


@pytest.mark.parametrize("make, field", [
    (lambda: GenerateConfig(n=0), "generate.n"),
    (lambda: GenerateConfig(top_p=1.5), "generate.top_p"),
    (lambda: SelfRagConfig(retrieval="sometimes"), "selfrag.retrieval"),
    (lambda: SelfRagConfig(threshold=2.0), "selfrag.threshold"),
    (lambda: CalmConfig(languages=("en", "xx")), "calm.languages"),
    (lambda: CalmConfig(languages=("en", "en")), "repeats"),
    (lambda: TrainConfig(beta=0), "train.beta"),
    (lambda: PairsConfig(min_agreement=1.5), r"pairs.min_agreement=1.5; use a share of the votes in \[0, 1\]"),
    (lambda: PairsConfig(min_agreement=-0.2), "pairs.min_agreement=-0.2"),
])
def test_invalid_values_name_the_field(make, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        make()


def test_yaml_sets_defaults_and_cli_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("generate:\n  n: 5\n  temperature: 0.3\ncalm:\n  languages: en,zh\n")
    cfg = load_yaml(path)
    assert cfg["generate"].n == 5 and cfg["calm"].languages == ("en", "zh")
    assert override(cfg["generate"], n=2, temperature=None).n == 2
    assert override(cfg["generate"], n=None).temperature == 0.3


def test_pairs_min_agreement_defaults_off_and_loads_from_yaml(tmp_path):
    assert PairsConfig().min_agreement is None  # the paper: every question with a winner
    path = tmp_path / "run.yaml"
    path.write_text("pairs:\n  min_agreement: 0.5\ncalm:\n  vote: weighted\n")
    cfg = load_yaml(path)
    assert cfg["pairs"].min_agreement == 0.5 and cfg["calm"].vote == "weighted"
    path.write_text("pairs:\n  min_agreement: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml \[pairs\]: pairs\.min_agreement=2; use a share"):
        load_yaml(path)


def test_yaml_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("generate:\n  samples: 5\n")
    with pytest.raises(ConfigError, match=r"run\.yaml \[generate\].*samples.*known keys"):
        load_yaml(path)


def test_frozen():
    with pytest.raises(AttributeError):
        GenerateConfig().n = 4  # type: ignore[misc]
