import pytest

from calm_rag.config import CalmConfig, ConfigError, GenerateConfig, PairsConfig, SelfRagConfig, TrainConfig
from calm_rag.config_files import load_run_config


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


def test_yaml_sets_values_and_flags_override_them(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("generate:\n  n: 5\n  temperature: 0.3\ncalm:\n  languages: en,zh\n")
    cfg = load_run_config(path)
    assert cfg.generate.n == 5 and cfg.calm.languages == ("en", "zh")
    flagged = load_run_config(path, generate={"n": 2, "temperature": None})  # None: the flag was not given
    assert (flagged.generate.n, flagged.generate.temperature) == (2, 0.3)


def test_one_rule_for_paths_in_a_run_yaml(tmp_path, monkeypatch):
    """Paths in the file are relative to the file's folder (normalised); a model that is no path stays a name."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "models" / "mine").mkdir(parents=True)
    path = tmp_path / "conf" / "run.yaml"
    path.write_text("model:\n  generator: ../models/mine\n  embedder: multilingual-e5-small\n"
                    "calm:\n  languages: [en, zh]\n  reuse: ../runs/six\n"
                    "data:\n  files: {en: ../data/en.json, zh: /abs/zh.json}\n  split: ../splits/s.json\n"
                    "selfrag:\n  index: ../indexes/demo\n")
    monkeypatch.chdir(tmp_path / "models")  # the working folder plays no part
    cfg = load_run_config(path)
    assert cfg.model.generator == str(tmp_path / "models" / "mine")
    assert cfg.model.embedder == "multilingual-e5-small"
    assert cfg.calm.reuse == str(tmp_path / "runs" / "six")
    assert cfg.data.files == {"en": str(tmp_path / "data" / "en.json"), "zh": "/abs/zh.json"}
    assert cfg.data.split == str(tmp_path / "splits" / "s.json")
    assert cfg.selfrag.index == str(tmp_path / "indexes" / "demo")
    path.write_text("model:\n  generator: qwen2.5-coder-1.5b-instruct\ncalm:\n  languages: [en, zh]\n")
    assert load_run_config(path).model.generator == "qwen2.5-coder-1.5b-instruct"


def test_calm_needs_two_languages(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("calm:\n  languages: [en]\n")
    with pytest.raises(ConfigError, match=r"run\.yaml \[calm\]: calm\.languages=\['en'\] has one language, but CALM "
                                          r"votes across languages; list at least two"):
        load_run_config(path)


def test_pairs_min_agreement_defaults_off_and_loads_from_yaml(tmp_path):
    assert PairsConfig().min_agreement is None  # the paper: every question with a winner
    path = tmp_path / "run.yaml"
    path.write_text("pairs:\n  min_agreement: 0.5\ncalm:\n  vote: weighted\n")
    cfg = load_run_config(path)
    assert cfg.pairs.min_agreement == 0.5 and cfg.calm.vote == "weighted"
    path.write_text("pairs:\n  min_agreement: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml \[pairs\]: pairs\.min_agreement=2; use a share"):
        load_run_config(path)


def test_yaml_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("generate:\n  samples: 5\n")
    with pytest.raises(ConfigError, match=r"run\.yaml \[generate\].*samples.*known keys"):
        load_run_config(path)


def test_frozen():
    with pytest.raises(AttributeError):
        GenerateConfig().n = 4  # type: ignore[misc]
