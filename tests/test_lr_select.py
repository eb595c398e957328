"""lr-select's rules: per-condition choice, tie -> smaller LR, batch-size candidates adopted only if strictly better."""

from loraexp.contracts import Contract, load_contract
from loraexp.stages.lr_select import choose, grid_points, select_per_condition


def entry(condition, lr, batch_size, nll):
    return {"condition": condition, "learning_rate": lr, "batch_size": batch_size, "best_val_nll": nll}


def contract_with(batch_size_candidates=(16,)) -> Contract:
    raw = load_contract("configs/demo.toml").model_dump(mode="json")
    raw["lr_select"]["batch_size_candidates"] = list(batch_size_candidates)
    return Contract.model_validate(raw)


def test_tie_goes_to_the_smaller_learning_rate():
    entries = [entry("a", 3e-3, 8, 0.5), entry("a", 1e-3, 8, 0.5), entry("a", 1e-2, 8, 0.6)]
    assert choose(entries, 8)["learning_rate"] == 1e-3


def test_batch_size_candidate_adopted_only_when_strictly_better():
    contract = contract_with()
    entries = [entry(c, lr, 8, 0.40 if lr == 3e-3 else 0.45) for c in ("attention_only", "all_layer") for lr in (1e-3, 3e-3, 1e-2)]
    entries += [entry("attention_only", 3e-3, 16, 0.40), entry("all_layer", 3e-3, 16, 0.39)]
    chosen = select_per_condition(contract, entries)
    assert (chosen["attention_only"]["selected_lr"], chosen["attention_only"]["selected_batch_size"]) == (3e-3, 8)  # a tie keeps batch 8
    assert (chosen["all_layer"]["selected_lr"], chosen["all_layer"]["selected_batch_size"]) == (3e-3, 16)


def test_conditions_are_not_compared_with_each_other():
    contract = contract_with(())
    entries = [entry("attention_only", 1e-3, 8, 0.9), entry("attention_only", 3e-3, 8, 0.8), entry("attention_only", 1e-2, 8, 0.85),
               entry("all_layer", 1e-3, 8, 0.2), entry("all_layer", 3e-3, 8, 0.3), entry("all_layer", 1e-2, 8, 0.25)]
    chosen = select_per_condition(contract, entries)
    assert chosen["attention_only"]["selected_lr"] == 3e-3 and chosen["all_layer"]["selected_lr"] == 1e-3


def test_reference_grid_points():
    points = grid_points(load_contract("configs/lora-and-friends.toml"))
    assert len(points) == 2 * 3 * 3  # conditions x (batch 8, 512, 1024) x 3 LRs
    assert {(size, lr) for _, size, lr in points} == {(s, lr) for s in (8, 512, 1024) for lr in (1e-4, 3e-4, 1e-3)}
