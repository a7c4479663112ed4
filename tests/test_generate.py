import pytest

from calm_rag.config import GenerateConfig
from calm_rag.generate import load_generator


def _gen(path):
    return load_generator(str(path), backend="transformers", device="cpu")


def test_batched_sampling_shapes_and_seed(tiny_lm_dir):
    g = _gen(tiny_lm_dir)
    cfg = GenerateConfig(n=3, temperature=1.0, max_new_tokens=6, batch_size=4, seed=7)
    prompts = [g.chat_prompt("Where do you keep milk?"), g.chat_prompt("答案是什么？")]
    a = g.generate(prompts, cfg)
    b = g.generate(prompts, cfg)
    assert len(a) == 2 and all(len(x) == 3 for x in a)
    assert a == b  # same seed, same text
    c = g.generate(prompts, cfg, seed=8)
    assert c != a


def test_batched_equals_one_at_a_time_greedy(tiny_lm_dir):
    g = _gen(tiny_lm_dir)
    cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=8, batch_size=8)
    prompts = [g.chat_prompt(q) for q in ("hi", "Where do you keep milk? A. fridge B. oven", "答案")]
    batched = g.generate(prompts, cfg)
    single = [g.generate([p], cfg)[0] for p in prompts]
    assert batched == single  # left padding does not change greedy outputs


def test_next_token_probs_are_probabilities(tiny_lm_dir):
    g = _gen(tiny_lm_dir)
    probs = g.next_token_probs([g.chat_prompt("Yes or No?")] * 2, ["Yes", "No"])
    assert len(probs) == 2
    for row in probs:
        assert set(row) == {"Yes", "No"}
        assert all(0.0 < v < 1.0 for v in row.values())
    assert probs[0] == probs[1]


def test_shared_prefix_equals_plain_generate(tiny_lm_dir):
    """n samples reuse one prompt prefill (KV cache copied n times) without changing the output."""
    g = _gen(tiny_lm_dir)
    prompts = [g.chat_prompt("Where do you keep milk? A. fridge B. oven"), g.chat_prompt("答案")]
    cfg = GenerateConfig(n=3, temperature=0.0, max_new_tokens=8, batch_size=6)
    shared = [x for row in g.generate(prompts, cfg) for x in row]
    enc = g.encode(prompts)
    ids = g.model.generate(input_ids=enc["input_ids"].repeat_interleave(3, 0),
                           attention_mask=enc["attention_mask"].repeat_interleave(3, 0), max_new_tokens=8,
                           do_sample=False, pad_token_id=g.tokenizer.pad_token_id)
    plain = [g.clean(t) for t in g.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:])]
    assert shared == plain


def test_length_sorted_batches_keep_the_callers_order(tiny_lm_dir):
    """Prompts are batched longest first; each result still belongs to its own prompt."""
    g = _gen(tiny_lm_dir)
    cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=6, batch_size=2)
    prompts = [g.chat_prompt(q) for q in ("hi", "Where do you keep milk? A. fridge B. oven C. shelf", "答案", "ok?")]
    batched = g.generate(prompts, cfg)
    assert batched == [g.generate([p], cfg)[0] for p in prompts]


def test_generate_scored_reads_the_raw_probabilities_at_the_first_step(tiny_lm_dir):
    """The recorded group probabilities equal softmax(raw logits) at the step that wrote the token."""
    import torch

    g = _gen(tiny_lm_dir)
    vocab = g.tokenizer.get_vocab()
    # two groups of ordinary tokens: the tiny model writes some of them greedily
    prompts = [g.chat_prompt("Where do you keep milk?"), g.chat_prompt("答案是什么？")]
    cfg = GenerateConfig(n=1, temperature=0.0, max_new_tokens=8)
    plain = g.generate(prompts, cfg)
    enc = g.encode(prompts)
    with torch.inference_mode():
        out = g.model.generate(**enc, max_new_tokens=8, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=g.tokenizer.pad_token_id)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    written = g.tokenizer.convert_ids_to_tokens(new[0].tolist())
    group = [written[2], next(t for t in vocab if t not in written)]  # one written at step 2, one never
    texts, tables = g.generate_scored(prompts, cfg, [group])
    assert texts == plain
    step = written.index(group[0])
    probs = torch.softmax(out.logits[step][0].float(), dim=-1)
    expected = {t: float(probs[vocab[t]]) for t in group}
    assert tables[0][0] == pytest.approx(expected, rel=1e-4)
    row1 = g.tokenizer.convert_ids_to_tokens(new[1].tolist())
    assert (tables[1][0] == {}) == (group[0] not in row1 and group[1] not in row1)


@pytest.mark.parametrize("k", [2, 1024])  # k=2 cannot hold the nucleus: the full-sort fallback
def test_nucleus_sampler_draws_from_the_top_p_set_in_proportion(k):
    import torch

    from calm_rag.backend_transformers import _NucleusSampler

    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])  # top_p 0.85 keeps the first three (0.9 >= 0.85)
    scores = probs.log().repeat(4000, 1)
    out = _NucleusSampler(temperature=1.0, top_p=0.85, k=k)(None, scores)
    assert torch.isfinite(out).sum(-1).eq(1).all()  # one token left per row, picked greedily after
    drawn = out.argmax(-1)
    freq = torch.bincount(drawn, minlength=5).float() / len(drawn)
    assert freq[3:].sum() == 0
    assert freq[:3].tolist() == pytest.approx((probs[:3] / probs[:3].sum()).tolist(), abs=0.03)


def test_nucleus_sampler_applies_the_temperature():
    import torch

    from calm_rag.backend_transformers import _NucleusSampler

    torch.manual_seed(0)
    scores = torch.tensor([[2.0, 1.0, 0.0]]).repeat(4000, 1)
    drawn = _NucleusSampler(temperature=2.0, top_p=1.0)(None, scores).argmax(-1)
    expected = torch.softmax(torch.tensor([2.0, 1.0, 0.0]) / 2.0, -1)
    assert (torch.bincount(drawn, minlength=3).float() / 4000).tolist() == pytest.approx(expected.tolist(), abs=0.03)


def test_min_new_tokens_blocks_the_end_of_turn(tiny_lm_dir):
    """With end-of-turn made near certain, outputs are empty unless min_new_tokens holds it off."""
    import torch

    g = _gen(tiny_lm_dir)
    eos = g.tokenizer.eos_token_id

    def boost_eos(input_ids, scores):
        scores[:, eos] += 100.0
        return scores

    enc = g.encode([g.chat_prompt("hi")])
    for min_new, expected in ((0, 0), (7, 7)):
        cfg = GenerateConfig(n=1, temperature=1.0, max_new_tokens=7, min_new_tokens=min_new, seed=1)
        kwargs = g._generate_kwargs(cfg, None)
        kwargs["logits_processor"].insert(0, boost_eos)
        with torch.inference_mode():
            new = g.model.generate(**enc, **kwargs)[0, enc["input_ids"].shape[1]:].tolist()
        assert len([t for t in new if t not in (eos, g.tokenizer.pad_token_id)]) == expected
    with pytest.raises(ValueError, match="min_new_tokens"):
        GenerateConfig(max_new_tokens=4, min_new_tokens=5)
