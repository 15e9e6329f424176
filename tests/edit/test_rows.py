"""LocoEdit and the neuron-level edit choose the same concept rows, for every token choice and every family."""

import pytest
import torch

torch.set_num_threads(1)

from locoedit.edit import (
    EditRequest,
    NeuronRequest,
    compute_edit,
)
from locoedit.edit.request import TOKEN_CHOICES
from locoedit.edit.rows import ConceptPrompt, concept_positions

PROMPTS = ("a painting in the style of {c}", "a house in the style of {c}")


@pytest.mark.parametrize("family", ["sd", "pixart"])  # a causal CLIP encoder and a T5 one
@pytest.mark.parametrize("token", TOKEN_CHOICES)
@pytest.mark.parametrize("target", ["monet", ""])  # a rewrite, and a removal
def test_neuron_edit_and_locoedit_choose_the_same_rows(tiny_adapters, family, token, target):
    adapter = tiny_adapters[family]
    common = dict(model="tiny", concepts=("van gogh",), kind="style", prompts=PROMPTS, layers=(0,), token=token)
    edit = compute_edit(adapter, EditRequest(targets=(target,), **common))
    neurons = compute_edit(adapter, NeuronRequest(neutral=("a painting",), **common))
    assert [prompt for prompt, _ in edit.settings["prompt_pairs"]] == neurons.settings["concept_prompts"]
    assert edit.settings["concept_positions"] == neurons.settings["concept_positions"]
    positions = neurons.settings["concept_positions"]
    tokens = adapter.tokenize(neurons.settings["concept_prompts"][1])
    if token == "from-concept":  # the concept's tokens and every later row, padding included, in both methods
        assert positions[1][-1] == tokens.rows - 1 > tokens.eos
    elif token == "eos":
        assert positions[1] == [tokens.eos]


def test_concept_positions_select_by_token_choice(tiny_adapters):
    adapter = tiny_adapters["sd"]
    prompt = "a house in the style of van gogh"
    item = ConceptPrompt("van gogh", prompt, prompt.index("van gogh"))
    tokens = adapter.tokenize(prompt)
    span = tokens.positions_of(item.start, item.start + len(item.concept))
    assert concept_positions(adapter, item, "all") == span and len(span) >= 2
    assert concept_positions(adapter, item, "last-subject") == [span[-1]]
    assert concept_positions(adapter, item, "eos") == [tokens.eos]
    assert concept_positions(adapter, item, "from-concept") == list(range(span[0], tokens.rows))
