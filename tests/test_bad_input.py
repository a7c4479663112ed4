"""Bad input through the real CLI (`calm_rag.cli.main`): a clean one-line error (exit 2) naming the file or
field and the fix, never a traceback, never a silent wrong result, never a lost file (issue 16).

Each test is one case of the issue (or a sibling of one); the README's "Bad input" line counts them.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
from pathlib import Path

import pytest

from calm_rag.cli import main

REPO = Path(__file__).resolve().parent.parent
DOCS = [
    {"id": "en-1", "title": "Heart", "contents": "The heart pumps blood through the body.", "lang": "en", "source": "t"},
    {"id": "en-2", "title": "Aspirin", "contents": "Aspirin reduces fever and pain.", "lang": "en", "source": "t"},
    {"id": "en-3", "title": "Dogs\x1b]0;pwned\x07", "contents": "A dog is a pet.\x1b[2J\x1b[H Cats are pets too.",
     "lang": "en", "source": "t"},
    {"id": "zh-1", "title": "心脏", "contents": "心脏把血液泵到全身。", "lang": "zh", "source": "t"},
]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def clean_error(code: int, err: str, *needles: str) -> None:
    """Exit 2 with one line `calm-rag: error: ...` holding every needle; no traceback (a model's loading bar may
    come before it on stderr)."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    assert err.endswith("\n") and lines[-1].startswith("calm-rag: error: "), err
    assert err.count("calm-rag: error") == 1, err
    for needle in needles:
        assert needle in lines[-1], (needle, err)


def write_corpus(path: Path, docs=DOCS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, corpus, tiny_embedder_path) -> Path:
    out = tmp_path_factory.mktemp("built") / "idx"
    assert main(["index", "build", "--corpus", str(corpus), "--out", str(out),
                 "--embedder", str(tiny_embedder_path)]) == 0
    return out


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(path: Path, fn) -> None:
    m = json.loads((path / "manifest.json").read_text())
    fn(m)
    (path / "manifest.json").write_text(json.dumps(m))


# ---------------------------------------------------------------- data loss: index build --overwrite


def test_overwrite_refuses_a_folder_that_is_not_an_index(capsys, tmp_path, corpus, tiny_embedder_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("my own file")
    code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", notes, "--overwrite",
                       "--embedder", tiny_embedder_path)
    clean_error(code, err, str(notes), "not a calm-rag index", "choose another --out")
    assert (notes / "todo.txt").read_text() == "my own file"
    # pointed at the corpus's own folder it would have deleted the corpus
    code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", corpus.parent, "--overwrite",
                       "--embedder", tiny_embedder_path)
    clean_error(code, err, "not a calm-rag index")
    assert corpus.is_file()


def test_overwrite_refuses_an_index_folder_holding_user_files(capsys, tmp_path, index_dir, corpus,
                                                             tiny_embedder_path):
    idx = copy_index(index_dir, tmp_path / "idx")
    (idx / "notes.md").write_text("mine")
    code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", idx, "--overwrite",
                       "--embedder", tiny_embedder_path)
    clean_error(code, err, "not a calm-rag index")
    assert (idx / "notes.md").read_text() == "mine" and (idx / "index.faiss").is_file()


def test_out_naming_a_file_is_refused(capsys, tmp_path, corpus, tiny_embedder_path):
    f = tmp_path / "f.txt"
    f.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", f, *extra,
                           "--embedder", tiny_embedder_path)
        clean_error(code, err, str(f), "is a file", "--out")
    assert f.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no f.txt.old, no f.txt.partial


def test_overwrite_replaces_an_index_and_spares_neighbours(capsys, tmp_path, index_dir, corpus, tiny_embedder_path):
    idx = copy_index(index_dir, tmp_path / "idx")
    old_sha = json.loads((idx / "manifest.json").read_text())["files"]["index.faiss"]["sha256"]
    (tmp_path / "idx.old").mkdir()  # a user's folder next to it, named like the old backup
    (tmp_path / "idx.old" / "keep.txt").write_text("mine")
    small = write_corpus(tmp_path / "small.jsonl", DOCS[:2])
    code, out, err = cli(capsys, "index", "build", "--corpus", small, "--out", idx, "--overwrite",
                         "--embedder", tiny_embedder_path)
    assert code == 0, err
    manifest = json.loads((idx / "manifest.json").read_text())
    assert manifest["counts"]["documents"] == 2 and manifest["files"]["index.faiss"]["sha256"] != old_sha
    assert (tmp_path / "idx.old" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "idx.partial").exists()


def test_a_users_partial_folder_is_not_deleted(capsys, tmp_path, corpus, tiny_embedder_path):
    (tmp_path / "idx.partial").mkdir()
    (tmp_path / "idx.partial" / "draft.txt").write_text("mine")
    code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", tmp_path / "idx",
                       "--embedder", tiny_embedder_path)
    clean_error(code, err, "idx.partial", "not an interrupted calm-rag build")
    assert (tmp_path / "idx.partial" / "draft.txt").read_text() == "mine"


# ---------------------------------------------------------------- index search / info


@pytest.mark.parametrize("k", ["-1", "0"])
def test_search_k_below_one(capsys, index_dir, k):
    code, out, err = cli(capsys, "index", "search", index_dir, "heart", "-k", k)
    clean_error(code, err, f"-k {k}", "at least 1")
    assert out == ""


def test_search_empty_query(capsys, index_dir):
    code, out, err = cli(capsys, "index", "search", index_dir, "heart", "  ")
    clean_error(code, err, "query 2 is empty")
    assert out == ""


def test_retriever_refuses_k_below_one_and_empty_queries(index_dir, tiny_encoder):
    """The library under every command (ask, shell, calm): k=0 no longer means 5, k=-1 is no FAISS assert."""
    from calm_rag.index import load_index
    from calm_rag.retrieve import Retriever

    r = Retriever(load_index(index_dir), tiny_encoder)
    for k in (0, -1):
        with pytest.raises(ValueError, match=f"k={k}: ask for at least 1"):
            r.search(["heart"], k=k)
    with pytest.raises(ValueError, match="query 1 of 1 is empty"):
        r.search([""], k=2)
    assert len(r.search(["heart"], k=2)[0]) == 2


def test_search_strips_terminal_control_characters(capsys, index_dir):
    code, out, err = cli(capsys, "index", "search", index_dir, "dog pet", "-k", "4")
    assert code == 0, err
    assert "Dogs" in out and "A dog is a pet." in out
    assert "\x1b" not in out and "\x07" not in out
    code, out, _ = cli(capsys, "index", "search", index_dir, "dog pet", "-k", "4", "--json")
    assert code == 0 and "\\u001b" in out  # JSON keeps the text exactly, escaped


@pytest.mark.parametrize("command", ["info", "search"])
def test_manifest_without_embedder(capsys, tmp_path, index_dir, command):
    bad = copy_index(index_dir, tmp_path / "bad")
    edit_manifest(bad, lambda m: m.pop("embedder"))
    code, _, err = cli(capsys, "index", command, bad, *(["heart"] if command == "search" else []))
    clean_error(code, err, str(bad / "manifest.json"), "'embedder'", "rebuild the index")


def test_manifest_without_counts(capsys, tmp_path, index_dir):
    bad = copy_index(index_dir, tmp_path / "bad")
    edit_manifest(bad, lambda m: m.pop("counts"))
    code, _, err = cli(capsys, "index", "info", bad)
    clean_error(code, err, "manifest.json", "'counts'", "rebuild the index")


def test_info_checks_a_truncated_index_file(capsys, tmp_path, index_dir):
    bad = copy_index(index_dir, tmp_path / "bad")
    data = (bad / "index.faiss").read_bytes()
    (bad / "index.faiss").write_bytes(data[: len(data) // 2])
    code, out, err = cli(capsys, "index", "info", bad)
    clean_error(code, err, str(bad / "index.faiss"), "truncated", "rebuild the index")
    assert out == ""


def test_info_checks_a_missing_chunk_store(capsys, tmp_path, index_dir):
    bad = copy_index(index_dir, tmp_path / "bad")
    (bad / "passages.jsonl").unlink()
    code, _, err = cli(capsys, "index", "info", bad)
    clean_error(code, err, str(bad / "passages.jsonl"), "missing", "rebuild the index")


@pytest.mark.parametrize("command", ["info", "search"])
def test_edited_passage_count(capsys, tmp_path, index_dir, command):
    bad = copy_index(index_dir, tmp_path / "bad")
    edit_manifest(bad, lambda m: m["counts"].update(passages=m["counts"]["passages"] + 100))
    code, _, err = cli(capsys, "index", command, bad, *(["heart"] if command == "search" else []))
    clean_error(code, err, "manifest.json", "counts say", "rebuild the index")


def test_info_of_a_healthy_index(capsys, index_dir):
    code, out, err = cli(capsys, "index", "info", index_dir)
    assert code == 0, err
    info = json.loads(out)
    assert info["documents"] == len(DOCS) and info["passages"] == sum(info["by_lang"].values())


def test_embedder_mismatch_names_both_sides_truthfully(tmp_path, index_dir):
    """The same embedder name on both sides means its files changed, not that another model was given."""
    from calm_rag.embed import load_encoder
    from calm_rag.index import IndexLoadError, load_index
    from tests.fixtures.tiny_embedder import build_tiny_embedder

    other = load_encoder(str(build_tiny_embedder(tmp_path / "s", seed=1)), device="cpu")
    manifest = json.loads((index_dir / "manifest.json").read_text())
    edit = copy_index(index_dir, tmp_path / "same")
    edit_manifest(edit, lambda m: m["embedder"].update(id=other.model_id))
    with pytest.raises(IndexLoadError, match="its embedder .* now gives other vectors.*changed since the build"):
        load_index(edit, expect_encoder=other)
    with pytest.raises(IndexLoadError, match=f"built with embedder {manifest['embedder']['id']}, but the encoder"):
        load_index(index_dir, expect_encoder=other)


# ---------------------------------------------------------------- index build: corpus first, recipes, checkpoints


def test_corpus_is_validated_before_the_embedder_loads(capsys, tmp_path, monkeypatch):
    import calm_rag.embed

    loaded = []
    monkeypatch.setattr(calm_rag.embed, "load_encoder", lambda *a, **k: loaded.append(a) or 1 / 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "title": "t", "contents": "c", "lang": "en"}\n')
    code, _, err = cli(capsys, "index", "build", "--corpus", bad, "--out", tmp_path / "idx")
    clean_error(code, err, f"{bad}:1", "missing field(s) ['source']")
    code, _, err = cli(capsys, "index", "build", "--corpus", tmp_path / "typo.jsonl", "--out", tmp_path / "idx")
    clean_error(code, err, "typo.jsonl", "no such corpus file")
    assert loaded == []


def test_missing_corpus_hint_names_the_working_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "index", "build", "--corpus", "nope.jsonl", "--out", "idx")
    clean_error(code, err, "nope.jsonl", "relative path is from the working folder", str(tmp_path))
    assert "repo root" not in err


def test_recipe_folder_with_jsonl_and_txt_files(capsys, tmp_path):
    folder = tmp_path / "notes"
    write_corpus(folder / "docs.jsonl")
    (folder / "a.txt").write_text("Heart\nThe heart pumps blood.\n")
    recipe = tmp_path / "indexes" / "mixed.yaml"
    recipe.parent.mkdir()
    recipe.write_text("corpora:\n  - {path: ../notes, lang: en}\n")  # relative to the recipe file
    code, _, err = cli(capsys, "index", "build", "--recipe", recipe)
    clean_error(code, err, str(folder), "docs.jsonl", "a text folder does not read")
    assert not (tmp_path / "indexes" / "mixed").exists()


def test_text_folder_language_hint_names_a_real_flag(capsys, tmp_path, tiny_embedder_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("Heart\nThe heart pumps blood.\n")
    code, _, err = cli(capsys, "index", "build", "--corpus", folder, "--out", tmp_path / "idx")
    clean_error(code, err, str(folder), "--lang en")
    code, _, err = cli(capsys, "index", "build", "--corpus", folder, "--out", tmp_path / "idx", "--lang", "en",
                       "--embedder", tiny_embedder_path)
    assert code == 0, err
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["counts"]["by_lang"] == {"en": 1}


def test_checkpoint_flag_and_small_default(capsys, tmp_path, monkeypatch, corpus, tiny_embedder_path):
    import calm_rag.index as index_mod

    assert index_mod.IndexConfig().shard_size <= 1024  # a few minutes of embedding at most, even on a CPU
    code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", tmp_path / "idx", "--checkpoint", "0")
    clean_error(code, err, "--checkpoint 0", "positive")
    real = index_mod.build_index

    def interrupted(*args, **kwargs):
        def stop(batches, done):
            if batches == 2:
                raise KeyboardInterrupt
        return real(*args, on_batch=stop, **kwargs)

    import calm_rag.index_recipes as recipes_mod  # build_from_recipe calls build_index from there

    monkeypatch.setattr(recipes_mod, "build_index", interrupted)
    code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", tmp_path / "idx", "--checkpoint", "1",
                       "--embedder", tiny_embedder_path)
    assert code == 130 and "rerun the same command to resume" in err
    shards = sorted((tmp_path / "idx.partial" / "emb").glob("shard-*.npy"))
    assert len(shards) == 1  # the first one-chunk checkpoint survived the interrupt
    monkeypatch.setattr(recipes_mod, "build_index", real)
    code, _, err = cli(capsys, "index", "build", "--corpus", corpus, "--out", tmp_path / "idx", "--checkpoint", "1",
                       "--embedder", tiny_embedder_path)
    assert code == 0, err
    assert not (tmp_path / "idx.partial").exists()


def test_sigint_is_restored_when_started_ignored(capsys, tmp_path):
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a non-interactive shell
    try:
        code, _, err = cli(capsys, "index", "build", "--corpus", tmp_path / "none.jsonl", "--out", tmp_path / "i")
        assert code == 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_interrupt_message_promises_resuming_only_where_it_resumes(capsys, monkeypatch, index_dir):
    import calm_rag.index as index_mod

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(index_mod, "load_index", interrupt)
    code, _, err = cli(capsys, "index", "info", index_dir)
    assert code == 130 and err == "calm-rag: interrupted\n"


# ---------------------------------------------------------------- configs: types and counts, checked up front

QA_FILE = REPO / "tests" / "data" / "qa" / "xcsr_dev.jsonl"


def run_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("yaml_text, needles", [
    ("generate: {n: 1.5}\n", ["[generate]", "n=1.5", "whole number"]),
    ("generate: {max_new_tokens: lots}\n", ["[generate]", "max_new_tokens='lots'", "whole number"]),
    ("generate: {temperature: 7e-1}\n", ["temperature='7e-1'", "5.0e-5"]),
    ("selfrag: {top_k: [3]}\n", ["[selfrag]", "top_k=[3]"]),
    ("calm: {languages: 5}\n", ["[calm]", "languages=5", "list of strings"]),
    ("train: {precompute_ref: maybe}\n", ["[train]", "precompute_ref='maybe'", "true or false"]),
    ("data: {max_train: -1}\n", ["data.max_train=-1", "0 or more"]),
    ("data: {max_eval: -1}\n", ["data.max_eval=-1", "0 or more"]),
    ("eval: {n: -1}\n", ["eval.n=-1", "at least 1"]),
    ("train: {max_steps: 0}\n", ["train.max_steps=0", "-1 to train by epochs"]),
    ("pairs: {min_agreement: 1.2}\n", ["[pairs]", "pairs.min_agreement=1.2", "[0, 1]"]),
    ("calm: {languages: [en]}\n", ["[calm]", "calm.languages=['en'] has one language", "--langs en,zh"]),
    ("calm: {languages: [en, zh], reuse: ../nowhere}\n", ["calm.reuse=", "nowhere: not a run folder"]),
])
def test_run_yaml_values_checked_when_the_config_loads(capsys, tmp_path, yaml_text, needles):
    """`calm sample` stops at the config, before any model loads or sampling starts."""
    cfg = run_yaml(tmp_path, yaml_text)
    code, _, err = cli(capsys, "calm", "sample", "--config", cfg, "--run", tmp_path / "run",
                       "--model", tmp_path / "no-such-model")
    clean_error(code, err, *needles)
    assert "not supported between" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--max-train", "--max-eval"])
def test_negative_question_counts_on_the_command_line(capsys, tmp_path, flag):
    code, _, err = cli(capsys, "calm", "sample", "--run", tmp_path / "run", flag, "-1",
                       "--model", tmp_path / "no-such-model")
    clean_error(code, err, f"data.{flag[2:].replace('-', '_')}=-1", f"{flag} N")


def test_eval_models_goes_with_a_run_folder(capsys, tmp_path):
    code, _, err = cli(capsys, "calm", "eval", "--data", QA_FILE, "--models", "calm",
                       "--model", tmp_path / "no-such-model", "--out", tmp_path / "ev")
    clean_error(code, err, "--models goes with --run")
    assert not (tmp_path / "ev").exists()


def test_eval_max_questions_negative(capsys, tmp_path):
    code, _, err = cli(capsys, "calm", "eval", "--data", QA_FILE, "--retrieval", "never", "--max-questions", "-1",
                       "--model", tmp_path / "no-such-model", "--out", tmp_path / "ev")
    clean_error(code, err, "--max-questions -1", "positive number")
    code, _, err = cli(capsys, "calm", "eval", "--data", QA_FILE, "--retrieval", "never", "-n", "-1",
                       "--model", tmp_path / "no-such-model", "--out", tmp_path / "ev")
    clean_error(code, err, "eval.n=-1")
    assert not (tmp_path / "ev").exists()


def test_yaml_comma_lists_and_bool_strings_still_load(tmp_path):
    """The type check keeps what worked: comma lists for list fields, YAML yes/no for train_tokens."""
    from calm_rag.config_files import load_run_config

    cfg = load_run_config(run_yaml(tmp_path, "calm: {languages: 'en, zh'}\neval: {retrieval: never}\n"
                                             "train: {train_tokens: no, learning_rate: 1.0e-4}\n"))
    assert cfg.calm.languages == ("en", "zh") and cfg.eval.retrieval == ("never",)
    assert cfg.train.train_tokens == "none" and cfg.train.learning_rate == 1e-4


# ---------------------------------------------------------------- ask and shell: settings before the model loads


@pytest.mark.parametrize("argv, needles", [
    (["--max-new-tokens", "0"], ["generate.max_new_tokens=0"]),
    (["-k", "0", "--index", "IDX"], ["selfrag.top_k=0"]),
    (["--threshold", "2"], ["selfrag.threshold=2"]),
])
def test_ask_settings_fail_before_loading(capsys, tmp_path, index_dir, argv, needles):
    argv = [str(index_dir) if a == "IDX" else a for a in argv]
    code, _, err = cli(capsys, "ask", "Where is milk kept?", "--lang", "en", "--model", tmp_path / "no-such-model",
                       *argv)
    clean_error(code, err, *needles)


def test_ask_json_includes_the_prompt_the_model_saw(capsys, index_dir, tiny_lm_dir):
    code, out, err = cli(capsys, "ask", "Where does the heart pump blood?", "--index", index_dir,
                         "--model", tiny_lm_dir, "--options", "A. body", "B. oven", "--retrieval", "always",
                         "-k", "2", "--max-new-tokens", "4", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["prompt"] and "Where does the heart pump blood?" in rec["prompt"]
    for c in rec["candidates"]:
        assert c["passage"]["passage"]["text"] in c["prompt"]  # the passage, as the model read it


@pytest.mark.parametrize("argv, needle", [(["-k", "-5"], "-k -5"), (["--max-new-tokens", "0"], "--max-new-tokens 0")])
def test_shell_settings_fail_before_loading(capsys, tmp_path, argv, needle):
    code, _, err = cli(capsys, "shell", "--index", tmp_path / "no-index", "--model", tmp_path / "no-model", *argv)
    assert code == 2 and "Traceback" not in err
    assert "calm-rag shell: error:" in err and needle in err and "no-index" not in err


def test_shell_save_only_into_existing_folders(capsys, tmp_path, monkeypatch, index_dir, tiny_lm_dir):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLUMNS", "400")  # no wrapped lines in the piped output
    lines = [":save early.jsonl",  # nothing asked yet
             "Where does the heart pump blood?",
             f":save {tmp_path}/no/such/dir/x.jsonl",
             ":save sub/s.jsonl",  # a new subfolder of the working folder is fine
             ":quit"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = cli(capsys, "shell", "--index", index_dir, "--model", tiny_lm_dir, "--max-new-tokens", "4",
                         "--retrieval", "always", "-k", "1")
    assert code == 0, err
    assert "nothing to save yet" in out and not (work / "early.jsonl").exists()
    assert "does not exist; create it first" in out and not (tmp_path / "no").exists()
    assert "saved 1 record(s)" in out and "saved 0" not in out
    rec = json.loads((work / "sub" / "s.jsonl").read_text().splitlines()[0])
    assert rec["candidates"][0]["prompt"]  # what the model saw, as in ask --json


def test_shell_interrupt_does_not_promise_resuming(capsys, monkeypatch, index_dir, tiny_lm_dir):
    class Interrupting(io.StringIO):
        def __iter__(self):
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", Interrupting(""))
    code, _, err = cli(capsys, "shell", "--index", index_dir, "--model", tiny_lm_dir)
    assert code == 130 and "interrupted" in err and "resume" not in err and "Traceback" not in err


# ---------------------------------------------------------------- QA files: hints name what a user can do


def test_pretty_printed_json_object_is_named_as_such(capsys, tmp_path):
    qa = tmp_path / "en.jsonl"
    qa.write_text(json.dumps({"question": {"stem": "Where?", "choices": []}, "answerKey": "A"}, indent=2))
    code, _, err = cli(capsys, "calm", "eval", "--data", qa, "--retrieval", "never",
                       "--model", tmp_path / "no-such-model", "--out", tmp_path / "ev")
    clean_error(code, err, str(qa), "pretty-printed", "one question object per line")
    assert "expected one object per line" not in err


def test_unrecognised_qa_record_names_no_python_arguments(capsys, tmp_path):
    qa = tmp_path / "en.jsonl"
    qa.write_text(json.dumps({"q": "Where?", "a": "home"}) + "\n")
    code, _, err = cli(capsys, "calm", "eval", "--data", qa, "--retrieval", "never",
                       "--model", tmp_path / "no-such-model", "--out", tmp_path / "ev")
    clean_error(code, err, "unrecognised record", "convert the file")
    assert "pass fmt= and columns=" not in err


def test_shell_output_drops_terminal_control_sequences():
    """Passages and model outputs reach the shell's panels through selfrag.printable: an escape sequence that
    would retitle the terminal or clear the screen is dropped, line breaks stay."""
    from calm_rag.selfrag import printable

    hostile = "Heart\x1b]0;pwned\x07 pumps\x1b[2J blood\nline two\r\nthree\u202e"
    out = printable(hostile, keep_lines=True)
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\r" not in out
    assert out.splitlines()[0].startswith("Heart") and "line two" in out and len(out.splitlines()) == 3
    assert "\n" not in printable(hostile)
    import inspect

    from calm_rag import shell

    source = inspect.getsource(shell.render_turn) + inspect.getsource(shell.ShellSession)
    assert source.count("selfrag.printable(") >= 4  # answer, passage titles and texts, raw outputs


def test_cuda_device_without_cuda_is_a_clean_error(capsys, tiny_lm_dir):
    """--device cuda on a machine without CUDA: one line naming --device and the fix, before any model loads."""
    import torch

    from calm_rag.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["ask", "What pumps blood?", "--model", str(tiny_lm_dir), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "--device cuda" in err and "--device cpu" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_an_adapter_on_another_base_names_its_base(capsys, tmp_path, tiny_lm_dir):
    """`--model` that is not the base the adapter was trained on: one line naming the base, before anything loads."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/other-base"}))
    data = REPO / "tests" / "data" / "qa" / "xcsr_dev.jsonl"
    code, _, err = cli(capsys, "calm", "eval", "--data", data, "--model", tiny_lm_dir, "--adapter", adapter,
                       "--retrieval", "never", "--out", tmp_path / "ev")
    clean_error(code, err, f"--adapter {adapter} was trained on org/other-base, not {tiny_lm_dir}",
                "pass --model org/other-base")
    code, _, err = cli(capsys, "ask", "Where is milk?", "--adapter", "calm-no-such-adapter")
    clean_error(code, err, "--adapter calm-no-such-adapter: no such adapter folder and no packaged adapter")
