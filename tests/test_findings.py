"""Each finding's row recomputed by hand from tiny synthetic inputs: its estimate, interval and
holds/not-holds decision (one input built so the claim holds, one so it fails), and the columns
that say what the number is (finding, setting, n_children, ci_over, scale) and the numbers in its
note. The inputs are built so that the answer is known in closed form: a column shifted by a
constant c from another has a perplexity exp(-c) times the other's in every paired resample, so
a ratio or a sign is the same in every resample; over seeds, Student t's interval is computed from
the textbook quantiles t(0.975; 2) = 4.303.

Tolerances: rel 1e-9 to 1e-12 where a value is recomputed another way (float64 rounding
reaches ~1e-14 here: means of ~150 values, differences of perplexities 5% apart); every mutant
these checks catch moves the value by more than 1e-3. The Markdown's 3 significant digits are
read back within 5e-3.

These functions run inside the workflow's scripts, which mutation testing cannot see: the
tests here call them in-process with the frames those scripts pass them.
"""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from knnlm_limits import findings
from knnlm_limits.stats import bootstrap_ci

SCALE = {"model": "m", "architecture": "gpt2", "n_layer": 2, "n_embd": 8, "vocab_size": 50, "step": 20,
         "train_tokens": 1000, "key": "mlp_input"}
T975_DF2 = 4.303  # Student t, 97.5% quantile, 2 degrees of freedom (3 seeds), from the t table
RESAMPLES, SEED = 300, 3


def _numbers(text: str) -> list[float]:
    """The numbers written in a note or criterion (thousands separators dropped)."""
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e[+-]\d+)?", text.replace(",", ""))]


def _check_row(row, finding, ci_over, setting="", n_children="all", rule=None, scale=SCALE):
    """The columns that say what a row's number is; `rule` ("above 0", ...) is in its criterion."""
    assert set(row) == set(findings.COLUMNS)
    assert row["finding"] == finding and row["ci_over"] == ci_over
    assert row["setting"] == setting and row["n_children"] == n_children
    assert {k: row[k] for k in findings.SCALE_COLUMNS} == {k: scale.get(k) for k in findings.SCALE_COLUMNS}
    assert isinstance(row["paper"], str) and row["paper"]
    assert isinstance(row["criterion"], str) and (rule is None or rule in row["criterion"])
    assert isinstance(row["note"], str)


def _estimate(row):
    return row["measured"], row["ci_low"], row["ci_high"]


def _ppl_diff(means):  # the test's own statistic, for intervals recomputed with stats.bootstrap_ci
    return np.exp(-means[..., 0]) - np.exp(-means[..., 1])


# ---------------------------------------------------------------- Table 1


def _summary(converged=(True, False, True)):
    rows = [("f", "proj_f", 11, 0.125), ("f∘g", "proj_fg", 22, 0.25), ("f reverse", "proj_f_reverse", 33, 0.375)]
    return pd.DataFrame([{"projection": p, "column": c, "direction": "reverse", "solver": "lbfgs", "iterations": it,
                          "final_mean_kl": kl, "converged": ok} for (p, c, it, kl), ok in zip(rows, converged)])


def _table1(hold: bool, setting="tuned"):
    """150 projected tokens, 200 whole-test-set tokens. The kNN-LM is the LM shifted by +0.05
    (hold) or -0.05 (fail) a token; a projection equal to the kNN-LM has gap 0 in every
    resample, equal to the LM gap 1; the convex one, the LM shifted by s in [0.03, 0.05] a
    token (hold), has gap (e^-s̄ - e^-0.05) / (1 - e^-0.05) in [0, 0.394] in every resample."""
    rng = np.random.default_rng(1)
    c = 0.05 if hold else -0.05
    lm = np.log(rng.uniform(0.1, 0.3, 150))
    knnlm = lm + c
    shift = rng.uniform(0.03, 0.05, 150)
    proj = ({"proj_f": knnlm, "proj_fg": lm, "proj_f_reverse": lm + shift} if hold else
            {"proj_f": lm, "proj_fg": knnlm, "proj_f_reverse": lm})
    per_token = pd.DataFrame({"lm": lm, "knnlm": knnlm, **proj})
    test_lm = np.log(rng.uniform(0.1, 0.3, 200))
    rows = findings.table1(per_token, test_lm, test_lm + c, _summary(), SCALE, setting, RESAMPLES, SEED)
    return {r["finding"]: r for r in rows}, per_token, test_lm, shift


def test_table1_claims_built_to_hold():
    rows, per_token, test_lm, shift = _table1(hold=True)
    assert list(rows) == ["knnlm_beats_lm", "softmax_bottleneck_ruled_out", "softmax_bottleneck_ruled_out_convex",
                          "mlp_hurdle_in_projection"]
    beats = rows["knnlm_beats_lm"]
    _check_row(beats, "knnlm_beats_lm", "200 test tokens", "tuned", rule="above 0")
    assert beats["note"] == ""
    # ppl_lm (1 - e^-0.05) with ppl_lm in [3.3, 10] in every resample: the interval inside (0.16, 0.49)
    assert beats["measured"] == pytest.approx(np.exp(-test_lm.mean()) * (1 - np.exp(-0.05)), rel=1e-12)
    expected = bootstrap_ci(np.column_stack([test_lm, test_lm + 0.05]), _ppl_diff, RESAMPLES, SEED)
    assert _estimate(beats) == pytest.approx(expected, rel=1e-12)
    assert 0.16 < beats["ci_low"] < beats["ci_high"] < 0.49 and beats["holds"]
    f, fg = rows["softmax_bottleneck_ruled_out"], rows["mlp_hurdle_in_projection"]
    assert _estimate(f) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12) and f["holds"]
    assert _estimate(fg) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12) and fg["holds"]
    convex = rows["softmax_bottleneck_ruled_out_convex"]
    gap = (np.exp(-shift.mean()) - np.exp(-0.05)) / (1 - np.exp(-0.05))
    assert convex["measured"] == pytest.approx(gap, rel=1e-9)

    def own_gap(means):
        ppl = np.exp(-means)
        return (ppl[..., 2] - ppl[..., 1]) / (ppl[..., 0] - ppl[..., 1])

    columns = per_token[["lm", "knnlm", "proj_f_reverse"]].to_numpy()
    assert _estimate(convex) == pytest.approx(bootstrap_ci(columns, own_gap, RESAMPLES, SEED), rel=1e-9)
    assert 0 <= convex["ci_low"] < convex["ci_high"] < 0.395 and convex["holds"]
    for finding, rule in (("softmax_bottleneck_ruled_out", "below 0.5"), ("mlp_hurdle_in_projection", "above 0.5"),
                          ("softmax_bottleneck_ruled_out_convex", "below 0.5")):
        _check_row(rows[finding], finding, "150 test tokens", "tuned", rule=rule)


def test_table1_claims_built_to_fail():
    """The kNN-LM worse than the LM by 0.05 a token; f's projections equal to the LM (gap 1),
    f∘g's equal to the kNN-LM (gap 0): no claim holds."""
    rows, _, test_lm, _ = _table1(hold=False)
    beats = rows["knnlm_beats_lm"]
    assert beats["measured"] == pytest.approx(np.exp(-test_lm.mean()) * (1 - np.exp(0.05)), rel=1e-12)
    assert beats["ci_high"] < 0 and not beats["holds"]
    for finding, gap in (("softmax_bottleneck_ruled_out", 1.0), ("softmax_bottleneck_ruled_out_convex", 1.0),
                         ("mlp_hurdle_in_projection", 0.0)):
        assert _estimate(rows[finding]) == pytest.approx((gap,) * 3, abs=1e-12) and not rows[finding]["holds"]


def test_table1_notes_state_each_solver_and_whether_it_converged():
    rows, *_ = _table1(hold=True, setting="fixed")
    assert {r["setting"] for r in rows.values()} == {"fixed"}
    for finding, iterations, kl, converged in (("softmax_bottleneck_ruled_out", 11, 0.125, True),
                                               ("mlp_hurdle_in_projection", 22, 0.25, False),
                                               ("softmax_bottleneck_ruled_out_convex", 33, 0.375, True)):
        note = rows[finding]["note"]
        assert iterations in _numbers(note) and kl in _numbers(note)
        assert ("NOT converged" in note) == (not converged) and "converged" in note


def test_a_knnlm_no_better_than_the_lm_does_not_beat_it():
    """Equal log-probs: the difference is 0 in every resample, an interval [0, 0] is not above 0."""
    lm = np.log(np.random.default_rng(2).uniform(0.1, 0.3, 50))
    per_token = pd.DataFrame({"lm": lm, "knnlm": lm + 0.1, "proj_f": lm, "proj_fg": lm, "proj_f_reverse": lm})
    beats = findings.table1(per_token, lm, lm.copy(), _summary(), SCALE, "fixed", RESAMPLES, SEED)[0]
    assert _estimate(beats) == (0.0, 0.0, 0.0) and not beats["holds"]


# ---------------------------------------------------------------- where retrieval helps


def test_knn_gains_passes_its_estimate_through_and_holds_strictly_above_zero():
    row = findings.knn_gains((0.4, 0.2, 0.6), 321, SCALE)[0]
    _check_row(row, "knn_gain_concentrated_in_rare_tokens", "321 test tokens", "fixed", rule="above 0")
    assert _estimate(row) == (0.4, 0.2, 0.6) and row["holds"]
    assert not findings.knn_gains((0.1, -0.1, 0.3), 321, SCALE)[0]["holds"]
    assert not findings.knn_gains((0.3, 0.0, 0.6), 321, SCALE)[0]["holds"]  # touching 0 is not above it


def test_search_fidelity_holds_strictly_below_zero_and_states_the_recall():
    table = pd.DataFrame({"recall_at_k": [1.0, 0.5, 0.75, 0.75]})
    row = findings.search_fidelity((-0.3, -0.5, -0.1), table, SCALE)[0]
    _check_row(row, "approximate_search_lowers_perplexity", "4 test queries", "fixed", rule="below 0")
    assert _estimate(row) == (-0.3, -0.5, -0.1) and row["holds"]
    assert _numbers(row["note"]) == [0.75]
    assert not findings.search_fidelity((-0.2, -0.4, 0.0), table, SCALE)[0]["holds"]  # touching 0
    assert not findings.search_fidelity((0.2, 0.1, 0.3), table, SCALE)[0]["holds"]


def _sizes(*entries):
    return pd.DataFrame([{"shards": i + 1, "of_shards": 4, "entries": e} for i, e in enumerate(entries)])


def test_datastore_growth_measured_from_two_sizes():
    row = findings.datastore_growth((0.5, 0.2, 0.8), _sizes(1000, 2000), 77, SCALE)[0]
    _check_row(row, "knn_gain_grows_with_datastore", "77 test tokens", rule="above 0")
    assert _estimate(row) == (0.5, 0.2, 0.8) and row["holds"]
    assert row["note"].startswith("perplexity per doubling")
    sizes = re.findall(r"(\d+)/(\d+) shards (\d{1,3}(?:,\d{3})*)", row["note"])
    assert sizes == [("1", "4", "1,000"), ("2", "4", "2,000")]
    assert not findings.datastore_growth((-0.1, -0.3, 0.1), _sizes(1000, 2000), 77, SCALE)[0]["holds"]


def test_datastore_growth_unmeasured_from_one_size():
    row = findings.datastore_growth((0.7, 0.1, 1.2), _sizes(1000), 77, SCALE)[0]
    assert row["measured"] == 0.7 and math.isnan(row["ci_low"]) and math.isnan(row["ci_high"]) and not row["holds"]
    assert row["note"].startswith("not measured") and "1/4 shards 1,000" in row["note"]


# ---------------------------------------------------------------- the parametric memory


def _memory_inputs(hold=True, n=120):
    """Each column the LM shifted by a constant a token, so each perplexity difference has the
    sign of its shift in every resample and, ppl_lm in [3.3, 10], lies inside (0, 1) when it
    holds; the memory's bytes ratio 1,500 / 1,000 = 1.5. The control memory's row comes first
    in the table, so only (kind, component) together pick the main memory's."""
    lm = np.log(np.random.default_rng(5).uniform(0.1, 0.3, n))
    s = 1.0 if hold else -1.0
    tokens = pd.DataFrame({"lm": lm, "knnlm_fixed": lm + 0.2, "knnlm_tuned": lm + 0.3,
                           "lm_memory_imit_fixed": lm + 0.1, "lm_memory_imit": lm + s * 0.15,
                           "lm_more": lm + 0.05, "memory_imit": lm + s * 0.02, "lm_memory_vals": lm + 0.1})
    table = pd.DataFrame([
        {"kind": "knn", "component": "kNN-LM", "bytes": 1500},
        {"kind": "memory", "component": "LM + memory vals", "bytes": 999, "train_flops": 7e8,
         "target_search_flops": 0.0},
        {"kind": "memory", "component": "LM + memory imit", "bytes": 1000, "train_flops": 2e9,
         "target_search_flops": 5e8},
        {"kind": "more_training", "component": "LM trained further", "bytes": 0, "train_flops": 2.5e9,
         "extra_steps": 44},
    ])
    return tokens, table


def _memory_rows(tokens, table, head="lm", control="vals"):
    rows = findings.memory(tokens, table, "imit", control, head, SCALE, RESAMPLES, SEED)
    return {(r["finding"], r["setting"]): r for r in rows}, rows


def test_memory_claims_built_to_hold():
    tokens, table = _memory_inputs(hold=True)
    rows, listed = _memory_rows(tokens, table)
    assert len(listed) == len(rows) == 6
    ppl_lm = np.exp(-tokens.lm.mean())
    over = "120 test tokens"
    # recovered: (1 - e^-m) / (1 - e^-k), the same in every resample
    for setting, m, k in (("fixed", 0.1, 0.2), ("tuned", 0.15, 0.3)):
        row = rows[("memory_recovers_knn_gain", setting)]
        _check_row(row, "memory_recovers_knn_gain", over, setting, rule="above 0")
        share = (1 - np.exp(-m)) / (1 - np.exp(-k))
        assert _estimate(row) == pytest.approx((share,) * 3, rel=1e-9) and row["holds"]
        assert "memory imit" in row["note"]
    for (finding, setting), a, b in ((("memory_beats_more_training", "tuned"), 0.05, 0.15),
                                     (("memory_alone_beats_lm", ""), 0.0, 0.02),
                                     (("memory_imitation_helps", "tuned"), 0.1, 0.15)):
        row = rows[(finding, setting)]
        _check_row(row, finding, over, setting, rule="above 0")
        assert row["measured"] == pytest.approx(ppl_lm * (np.exp(-a) - np.exp(-b)), rel=1e-9)
        assert 0 < row["ci_low"] <= row["measured"] <= row["ci_high"] < 1 and row["holds"]
        assert "memory imit" in row["note"]
    columns = tokens[["lm_more", "lm_memory_imit"]].to_numpy()
    assert _estimate(rows[("memory_beats_more_training", "tuned")]) == pytest.approx(
        bootstrap_ci(columns, _ppl_diff, RESAMPLES, SEED), rel=1e-12)
    ratio = rows[("memory_smaller_than_datastore", "")]
    _check_row(ratio, "memory_smaller_than_datastore", "bytes", rule="above 1")
    assert _estimate(ratio) == (1.5, 1.5, 1.5) and ratio["holds"]


def test_memory_claims_built_to_fail():
    """LM + memory and the memory alone worse than the LM: no claim on them holds; a memory
    larger than the datastore is not smaller."""
    tokens, table = _memory_inputs(hold=False)
    table.loc[table.component == "LM + memory imit", "bytes"] = 1500  # ratio exactly 1: not above 1
    rows, _ = _memory_rows(tokens, table)
    assert rows[("memory_recovers_knn_gain", "tuned")]["measured"] == pytest.approx(
        (1 - np.exp(0.15)) / (1 - np.exp(-0.3)), rel=1e-9)
    for key in (("memory_recovers_knn_gain", "tuned"), ("memory_beats_more_training", "tuned"),
                ("memory_alone_beats_lm", ""), ("memory_imitation_helps", "tuned")):
        assert rows[key]["ci_high"] < 0 and not rows[key]["holds"]
    ratio = rows[("memory_smaller_than_datastore", "")]
    assert _estimate(ratio) == (1.0, 1.0, 1.0) and not ratio["holds"]


def test_memory_notes_state_the_compute_and_the_bytes():
    tokens, table = _memory_inputs()
    rows, _ = _memory_rows(tokens, table)
    more = rows[("memory_beats_more_training", "tuned")]["note"]
    assert {44, 2.5e9, 2e9, 5e8} <= set(_numbers(more))
    imitation = rows[("memory_imitation_helps", "tuned")]
    assert "imit" in imitation["note"] and "vals" in imitation["note"]
    assert {2e9, 5e8, 25} <= set(_numbers(imitation["criterion"]))  # the search is 25% of its training
    bytes_note = rows[("memory_smaller_than_datastore", "")]["note"]
    assert {1500, 1000} <= set(_numbers(bytes_note)) and "memory imit" in bytes_note
    assert "its head counted" in bytes_note and "not counted" not in bytes_note
    frozen, _ = _memory_rows(tokens, table, head="lm_frozen")
    assert "the LM's own head not counted" in frozen[("memory_smaller_than_datastore", "")]["note"]


def test_memory_without_more_training_or_control_has_no_such_row():
    tokens, table = _memory_inputs()
    rows, listed = _memory_rows(tokens.drop(columns="lm_more"), table[table.kind != "more_training"], control=None)
    assert [r["finding"] for r in listed] == ["memory_recovers_knn_gain", "memory_recovers_knn_gain",
                                              "memory_alone_beats_lm", "memory_smaller_than_datastore"]


def test_memory_recovers_nothing_where_the_knnlm_gain_interval_reaches_zero():
    """At the fixed setting the kNN-LM is the LM shifted by +-0.3 token by token (mean shift 0:
    a difference of 0 whose interval straddles 0); at the tuned one it is the LM itself
    (interval [0, 0]). Neither has a gain to recover: unmeasured, and the note gives the gain."""
    tokens, table = _memory_inputs()
    lm = tokens.lm.to_numpy()
    tokens["knnlm_fixed"] = lm + np.where(np.arange(len(lm)) % 2 == 0, 0.3, -0.3)
    tokens["knnlm_tuned"] = lm
    rows, _ = _memory_rows(tokens, table)
    fixed, tuned = rows[("memory_recovers_knn_gain", "fixed")], rows[("memory_recovers_knn_gain", "tuned")]
    for row in (fixed, tuned):
        assert all(math.isnan(x) for x in _estimate(row)) and not row["holds"] and row["ci_over"] == "unmeasured"
    point, low, high = bootstrap_ci(tokens[["lm", "knnlm_fixed"]].to_numpy(), _ppl_diff, RESAMPLES, SEED)
    assert point == pytest.approx(0.0, abs=1e-12) and low < 0 < high
    gain = re.search(r"ppl_knnlm is (\S+) \[(\S+), (\S+)\] \((\d+) test tokens\)", fixed["note"])
    assert [float(x) for x in gain.groups()] == pytest.approx([point, low, high, 120], rel=1e-3, abs=1e-9)
    assert "memory imit" in fixed["note"]


# ---------------------------------------------------------------- Figures 1-3, over seeds and prompts


def _t95(values):
    """Student t's 95% interval of the mean of 3 per-seed values, by hand."""
    values = np.asarray(values, dtype=float)
    half = T975_DF2 * values.std(ddof=1) / math.sqrt(3)
    return values.mean(), values.mean() - half, values.mean() + half


def _children(rows):
    """One row per child: two children a parent, their log-likelihoods value +- 0.1 (mean: value)."""
    out = []
    for seed, variant, method, step, value in rows:
        for i, offset in enumerate((-0.1, 0.1)):
            out.append({"parent": f"p{seed}", "child": f"c{i}", "n_children": 2, "seed": seed, "variant": variant,
                        "method": method, "step": step, "loglik": value + offset})
    return pd.DataFrame(out)


def _figure1_children(early, at_zero, knn_variants=("full",)):
    """Steps 0, 1, 10, 20, 40, 100; early_fraction 0.2: the early checkpoints are 1, 10 and 20.
    no_last_mlp minus full LM at seed s: early[s] - 0.6, early[s], early[s] + 0.6 at steps 1, 10,
    20 (mean early[s]), 5 at step 0 and -5 later; kNN-LM minus LM at step 0: at_zero[s] (and 7 at
    step 1, which the claim must not read)."""
    rows = []
    for seed in range(3):
        for step in (0, 1, 10, 20, 40, 100):
            rows.append((seed, "full", "lm", step, -3.0))
            diff = {0: 5.0, 1: early[seed] - 0.6, 10: early[seed], 20: early[seed] + 0.6}.get(step, -5.0)
            rows.append((seed, "no_last_mlp", "lm", step, -3.0 + diff))
            for variant in knn_variants:
                lm = -3.0 if variant == "full" else -3.0 + diff
                rows.append((seed, variant, "knnlm", step, lm + (at_zero[seed] if step == 0 else 7.0)))
    return _children(rows)


def test_figure1_claims_built_to_hold():
    scale = {"model": "memorization/tiny", "architecture": "gpt2", "n_layer": 2, "n_embd": 8, "vocab_size": 50}
    rows = findings.figure1(_figure1_children([1.0, 1.5, 2.0], [0.9, 1.0, 1.1]), scale, 0.2)
    early, zero = rows
    _check_row(early, "no_last_mlp_learns_faster_early", "3 seeds", rule="above 0", scale=scale)
    assert _estimate(early) == pytest.approx(_t95([1.0, 1.5, 2.0]), rel=1e-9)  # [0.258, 2.742]
    assert early["holds"]
    numbers = re.search(r"steps ([\d, ]+) \(<= ([\d.]+) x (\d+)\)", early["note"]).groups()
    assert (numbers[0], float(numbers[1]), int(numbers[2])) == ("1, 10, 20", 0.2, 100)
    _check_row(zero, "knn_high_from_random_encoder", "3 seeds", rule="above 0", scale=scale)
    assert _estimate(zero) == pytest.approx(_t95([0.9, 1.0, 1.1]), rel=1e-9)  # [0.752, 1.248]
    assert zero["holds"] and "full" in zero["note"]


def test_figure1_claims_built_to_fail_one_row_per_knn_variant():
    rows = findings.figure1(_figure1_children([-1.0, 0.5, 2.0], [-1.0, -0.5, 0.0], ("full", "no_last_mlp")),
                            SCALE, 0.2)
    assert [r["finding"] for r in rows] == ["no_last_mlp_learns_faster_early"] + ["knn_high_from_random_encoder"] * 2
    assert _estimate(rows[0]) == pytest.approx(_t95([-1.0, 0.5, 2.0]), rel=1e-9) and not rows[0]["holds"]
    for row, variant in zip(rows[1:], ("full", "no_last_mlp")):
        assert _estimate(row) == pytest.approx(_t95([-1.0, -0.5, 0.0]), rel=1e-9) and not row["holds"]
        assert variant in row["note"]


def test_figure1_unmeasured_without_early_checkpoints_step_zero_or_both_variants():
    children = _figure1_children([1.0, 1.5, 2.0], [0.9, 1.0, 1.1])
    late = children[children.step.isin([0, 100])]
    no_zero = children[children.step != 0]
    one_variant = children[children.variant == "full"]
    for frame, which in ((late, 0), (no_zero, 1), (one_variant, 0)):
        row = findings.figure1(frame, SCALE, 0.2)[which]
        assert row["ci_over"] == "unmeasured" and not row["holds"] and math.isnan(row["measured"])
        assert row["note"] and isinstance(row["note"], str)
    late_note = findings.figure1(late, SCALE, 0.2)[0]["note"]
    assert {0, 0.2, 100} <= set(_numbers(late_note))
    assert "checkpoint" not in findings.figure1(one_variant, SCALE, 0.2)[0]["note"]


def _figure2_children(with_memory=True):
    """The last step 20 (step 10's values are noise the claims must not read); parents of 2 and 3
    children. LM log-likelihood log(1/n) - g: g per seed 1, 1.5, 2 for n = 2 and 2, 2.5, 3 for
    n = 3 (over all 5 children: 1.6, 2.1, 2.6). kNN-LM = LM + 0.9, 1.0, 1.1; LM + memory = LM
    + 0.4, 0.5, 0.6 for n = 2 and LM - the same for n = 3 (over all: -0.08, -0.1, -0.12)."""
    out = []
    for seed in range(3):
        for n, gaps in ((2, (1.0, 1.5, 2.0)), (3, (2.0, 2.5, 3.0))):
            lm = math.log(1 / n) - gaps[seed]
            memory = (0.4, 0.5, 0.6)[seed] * (1 if n == 2 else -1)
            for method, value in (("lm", lm), ("knnlm", lm + (0.9, 1.0, 1.1)[seed]), ("lm_memory", lm + memory)):
                if method == "lm_memory" and not with_memory:
                    continue
                for child in range(n):
                    out.append({"parent": f"p{n}", "child": f"c{child}", "n_children": n, "seed": seed,
                                "method": method, "step": 20, "loglik": value})
                    out.append({"parent": f"p{n}", "child": f"c{child}", "n_children": n, "seed": seed,
                                "method": method, "step": 10, "loglik": -50.0 + 3 * seed * child})
    return pd.DataFrame(out)


def test_figure2_claims_overall_and_per_number_of_children():
    scale = {"model": "base step 20"}
    rows = findings.figure2(_figure2_children(), scale)
    got = {(r["finding"], r["n_children"]): r for r in rows}
    assert len(rows) == len(got) == 9
    expected = {
        "overspecification_gap": {"all": [1.6, 2.1, 2.6], "2": [1.0, 1.5, 2.0], "3": [2.0, 2.5, 3.0]},
        "knn_helps_overspecification": {n: [0.9, 1.0, 1.1] for n in ("all", "2", "3")},
        "memory_helps_overspecification": {"all": [-0.08, -0.1, -0.12], "2": [0.4, 0.5, 0.6],
                                           "3": [-0.4, -0.5, -0.6]},
    }
    for finding, by_n in expected.items():
        for n, per_seed in by_n.items():
            row = got[(finding, n)]
            _check_row(row, finding, "3 seeds", n_children=n, rule="above 0", scale=scale)
            assert _estimate(row) == pytest.approx(_t95(per_seed), rel=1e-9)
            assert row["holds"] == (_t95(per_seed)[1] > 0)
            assert _numbers(row["note"]) == [20]
    # the intervals that hold start inside (0, 1] or above 1: the rule is "above 0"
    for key in (("overspecification_gap", "2"), ("memory_helps_overspecification", "2")):
        assert 0 < got[key]["ci_low"] < 1 and got[key]["holds"]
    assert not got[("memory_helps_overspecification", "3")]["holds"]


def test_figure2_without_a_memory_has_no_memory_rows():
    rows = findings.figure2(_figure2_children(with_memory=False), {"model": "base step 20"})
    assert [r["finding"] for r in rows] == ["overspecification_gap", "knn_helps_overspecification"] * 3


def _figure3_children(fractions):
    """n x p(child) = the given fraction: log-likelihood log(fraction / n), n = 2 for the first
    half of the children and 4 for the rest; a kNN-LM row the claim must not read."""
    half = len(fractions) // 2
    n = np.array([2] * half + [4] * (len(fractions) - half))
    lm = pd.DataFrame({"method": "lm", "n_children": n, "loglik": np.log(np.asarray(fractions) / n)})
    return pd.concat([lm, lm.assign(method="knnlm", loglik=0.0)], ignore_index=True), n


@pytest.mark.parametrize("fractions, holds", [([0.1, 0.3, 0.2, 0.45, 0.05, 0.25, 0.15, 0.35], True),
                                              ([0.6, 0.9, 0.7, 1.2, 0.8, 0.65, 0.95, 0.75], False)])
def test_figure3_fraction_of_the_perfect_likelihood(fractions, holds):
    """Every child below 0.5 (above 0.5): every resample's mean is too, the claim holds (fails)."""
    children, n = _figure3_children(fractions)
    scale = {"model": "chat step 0"}
    rows = findings.figure3(children, scale, RESAMPLES, SEED)
    assert [r["n_children"] for r in rows] == ["all", "2", "4"]
    fractions = np.asarray(fractions)
    for row, part in zip(rows, (np.ones(len(n), bool), n == 2, n == 4)):
        _check_row(row, "scaling_does_not_fix_overspecification", f"{part.sum()} prompts", n_children=row["n_children"],
                   rule="below 0.5", scale=scale)
        assert row["measured"] == pytest.approx(fractions[part].mean(), rel=1e-9)
        expected = bootstrap_ci(fractions[part][:, None], lambda m: m[..., 0], RESAMPLES, SEED)
        assert _estimate(row) == pytest.approx(expected, rel=1e-9)
        assert row["holds"] == holds and (row["ci_high"] < 0.5) == holds


# ---------------------------------------------------------------- scale, frame, Markdown, by scale


@pytest.mark.parametrize("spec, shape", [
    ({"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 64, "vocab_size": 100}, ("llama", 4, 64, 100)),
    ({"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "vocab_size": 50}, ("gpt2", 2, 32, 50)),
])
def test_scale_of_reads_either_spelling_of_the_model_shape(tmp_path, spec, shape):
    (tmp_path / "config.json").write_text(json.dumps(spec))
    point = {"model": "m", "step": 20, "train_tokens": 1000, "key": "k"}
    assert findings.scale_of(tmp_path, point) == {**point, **dict(zip(["architecture", "n_layer", "n_embd",
                                                                        "vocab_size"], shape))}


def test_to_frame_keeps_the_columns_even_without_rows():
    assert list(findings.to_frame([]).columns) == findings.COLUMNS
    rows = findings.knn_gains((0.4, 0.2, 0.6), 3, SCALE) * 2
    frame = findings.to_frame(rows)
    assert list(frame.columns) == findings.COLUMNS and len(frame) == 2 and frame.measured.tolist() == [0.4, 0.4]


def _md_frame():
    """As read back from a findings CSV: a missing step, key or note is NaN."""
    rows = [
        {"finding": "a", "model": "m", "step": 20.0, "key": "mlp_input", "n_children": "all", "paper": "p1",
         "measured": 0.123456, "ci_low": 0.1, "ci_high": 0.15, "holds": True, "criterion": "c1", "note": "note 7"},
        {"finding": "b", "model": "pretrained", "step": np.nan, "key": np.nan, "n_children": "2", "paper": "p2",
         "measured": -2.5, "ci_low": -3.25, "ci_high": -1.75, "holds": False, "criterion": "c2", "note": np.nan},
        {"finding": "c", "model": "m", "step": 0.0, "key": "", "n_children": "all", "paper": "p3",
         "measured": np.nan, "ci_low": np.nan, "ci_high": np.nan, "holds": False, "criterion": "c3", "note": ""},
    ]
    return pd.DataFrame(rows).reindex(columns=findings.COLUMNS)


def test_markdown_shows_each_row_with_its_numbers():
    lines = findings.markdown(_md_frame()).split("\n")
    assert lines[-1] == "" and len(lines) == 6
    table = lines[:-1]
    assert all(line.startswith("|") and line.endswith("|") and line.count("|") == 8 for line in table)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [c[:4] for c in cells] == [["a", "m step 20, key mlp_input", "all", "p1"], ["b", "pretrained", "2", "p2"],
                                      ["c", "m step 0", "all", "p3"]]
    for got, (measured, low, high) in zip((cells[0][4], cells[1][4]), ((0.123456, 0.1, 0.15), (-2.5, -3.25, -1.75))):
        shown = [float(x) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", got).groups()]
        assert shown == pytest.approx([measured, low, high], rel=5e-3)  # 3 significant digits
    assert cells[2][4] == "nan n/a"
    assert [c[5] for c in cells] == ["yes", "no", "no"]
    assert [c[6] for c in cells] == ["c1 (note 7)", "c2", "c3"]


def test_by_scale_keeps_the_scale_claims_sorted_by_claim_and_scale():
    rng = np.random.default_rng(0)
    rows = []
    for finding in ("knnlm_beats_lm", "memory_recovers_knn_gain", "overspecification_gap", "mlp_hurdle_in_projection"):
        for key in ("mlp_input", "attn", np.nan):
            for n_embd in (64, 8):
                for step in (100.0, np.nan, 20.0):
                    rows.append({"finding": finding, "key": key, "architecture": "gpt2", "n_layer": 2,
                                 "n_embd": n_embd, "step": step, "measured": rng.normal()})
    frame = pd.DataFrame(rows).reindex(columns=findings.COLUMNS).sample(frac=1.0, random_state=1)
    out = findings.by_scale(frame)
    assert list(out.columns) == findings.COLUMNS and list(out.index) == list(range(len(out)))

    def order(row):  # missing values last, column by column
        return tuple((1, 0) if pd.isna(row[c]) else (0, row[c])
                     for c in ("finding", "key", "architecture", "n_layer", "n_embd", "step"))

    expected = sorted((r for r in frame.to_dict("records") if r["finding"] != "overspecification_gap"), key=order)
    assert out.measured.tolist() == [r["measured"] for r in expected]
