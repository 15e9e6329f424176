import pytest
import torch

from locoedit.core.errors import LocoeditError
from locoedit.scoring import ClipScorer, ConceptScorer, PixelScorer, make_scorer


def test_clip_score_is_cosine_times_100_on_a_local_folder(tiny_clip_folder):
    scorer = make_scorer(f"clip:{tiny_clip_folder}")
    assert isinstance(scorer, ClipScorer)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scores = scorer.score(images, "a painting in the style of van gogh")
    assert scores.shape == (3,) and scores.abs().max() <= 100
    assert len(set(scores.tolist())) == 3  # different images, different scores
    assert torch.allclose(
        scorer.effect(images, images.flip(0), "van gogh"),
        scorer.score(images, "van gogh") - scorer.score(images.flip(0), "van gogh"),
    )
    assert torch.equal(scorer.effect(images, images, "van gogh"), torch.zeros(3))


def test_clip_score_equals_100_times_the_cosine_computed_by_hand(tiny_clip_folder):
    from transformers import CLIPModel, CLIPTokenizer

    scorer = ClipScorer(str(tiny_clip_folder))
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    concept = "a painting in the style of van gogh"
    # A second copy of the weights, read here: the text and image embeddings and their cosine written out.
    model = CLIPModel.from_pretrained(tiny_clip_folder).eval()
    ids = CLIPTokenizer.from_pretrained(tiny_clip_folder)([concept], return_tensors="pt").input_ids
    with torch.no_grad():
        text = model.text_projection(model.text_model(input_ids=ids).pooler_output)[0]  # [projection_dim]
        image = model.visual_projection(model.vision_model(pixel_values=scorer._pixels(images)).pooler_output)
    cosine = (image @ text) / (image.norm(dim=1) * text.norm())  # [3]
    assert cosine.abs().min() > 0.05  # far from 0, so that a wrong scale is visible
    torch.testing.assert_close(scorer.score(images, concept), 100 * cosine, rtol=1e-4, atol=1e-4)


def test_clip_preprocessing_resizes_and_centre_crops(tiny_clip_folder):
    scorer = ClipScorer(str(tiny_clip_folder))
    pixels = scorer._pixels(torch.rand(2, 3, 24, 48))
    assert pixels.shape == (2, 3, 32, 32)


OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def test_an_image_of_clips_size_is_only_normalised(tiny_clip_folder):
    scorer = ClipScorer(str(tiny_clip_folder))  # image_size 32; the folder has no preprocessor_config.json
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(scorer._pixels(images), (images - OPENAI_MEAN) / OPENAI_STD)


@pytest.mark.parametrize("portrait", [False, True])
def test_the_shortest_side_is_resized_to_clips_size_and_the_centre_kept(tiny_clip_folder, portrait):
    # 24 x 48 is resized to 32 x 64 and columns 16-47 of that are kept. A white band over columns 18-29 of 48
    # (24-39 of 64) lands on columns 8-23 of the kept square; black elsewhere. Checked 3 pixels away from its
    # edges, beyond the reach of the bicubic kernel.
    scorer = ClipScorer(str(tiny_clip_folder))
    image = torch.zeros(1, 3, 24, 48)
    image[..., 18:30] = 1.0
    if portrait:
        image = image.transpose(-1, -2)
    shown = scorer._pixels(image) * OPENAI_STD + OPENAI_MEAN  # back to [0, 1] pixels
    if portrait:
        shown = shown.transpose(-1, -2)
    assert shown.shape == (1, 3, 32, 32)
    assert shown.min() >= -1e-6 and shown.max() <= 1 + 1e-6  # bicubic over- and undershoot is clamped away
    torch.testing.assert_close(shown[..., 11:21], torch.ones(1, 3, 32, 10), rtol=0, atol=1e-5)
    torch.testing.assert_close(shown[..., :5], torch.zeros(1, 3, 32, 5), rtol=0, atol=1e-5)
    torch.testing.assert_close(shown[..., 27:], torch.zeros(1, 3, 32, 5), rtol=0, atol=1e-5)
    assert shown[..., 16].min() > 0.99  # the middle of the band: the crop is centred


def test_a_preprocessor_config_in_the_folder_sets_mean_and_std(tiny_clip_folder, tmp_path):
    import json
    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_folder, folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]})
    )
    scorer = ClipScorer(str(folder))
    images = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(scorer._pixels(images), (images - 0.5) / 0.25)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5]}))
    torch.testing.assert_close(ClipScorer(str(folder))._pixels(images), (images - 0.5) / OPENAI_STD)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_std": [0.25, 0.25, 0.25]}))
    torch.testing.assert_close(ClipScorer(str(folder))._pixels(images), (images - OPENAI_MEAN) / 0.25)


def test_pixel_effect_is_mean_absolute_difference():
    reference = torch.zeros(2, 3, 4, 4)
    images = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.5)])
    assert PixelScorer().effect(reference, images, "anything").tolist() == [0.0, 0.5]


def test_unknown_scorers_and_missing_clip_weights_are_explained(tmp_path):
    for spec in ("fid", "clip:", "pixelated", "Pixel"):
        with pytest.raises(
            LocoeditError, match=f"^unknown scorer '{spec}'; use 'pixel', 'toyworld' or 'clip:HUB_ID_OR_FOLDER'$"
        ):
            make_scorer(spec)
    with pytest.raises(
        LocoeditError,
        match="CLIP weights .* are not available \\(OSError\\): give a local folder with a "
        "transformers CLIPModel and its tokenizer, or a hub id that is in the cache "
        "or reachable$",
    ):
        make_scorer(f"clip:{tmp_path / 'nothing-here'}")


def test_scorer_specs_name_their_scorer(tiny_clip_folder):
    assert isinstance(make_scorer("pixel"), PixelScorer)
    assert make_scorer(f"clip:{tiny_clip_folder}").spec == f"clip:{tiny_clip_folder}"


def test_the_default_scorer_is_the_models_own_else_the_papers_clip(tiny_adapters):
    from locoedit.models import load_adapter
    from locoedit.scoring import scorer_spec_for

    assert scorer_spec_for(load_adapter("toyworld", device="cpu")) == "toyworld"  # its folder names its probe
    assert scorer_spec_for(tiny_adapters["sd"]) == "clip:openai/clip-vit-base-patch16"


class Brightness(ConceptScorer):
    """A concept scorer whose score is known by hand: the mean pixel value."""

    spec = "brightness"

    def score(self, images, concept):
        return images.flatten(1).mean(1)


def test_a_concept_scorers_effect_is_how_much_score_the_images_lost():
    reference = torch.stack([torch.full((3, 4, 4), 0.8), torch.full((3, 4, 4), 0.2)])
    images = torch.stack([torch.full((3, 4, 4), 0.3), torch.full((3, 4, 4), 0.5)])
    # Reference minus images: positive where the concept faded (0.8 -> 0.3), negative where it grew (0.2 -> 0.5).
    torch.testing.assert_close(Brightness().effect(reference, images, "light"), torch.tensor([0.5, -0.3]))


def test_the_toy_probe_effect_is_positive_when_the_concept_is_gone():
    from locoedit.toyworld import render

    scorer = make_scorer("toyworld")
    red = torch.stack(
        [torch.from_numpy(render("a red circle on black", seed)).permute(2, 0, 1).float() / 255 for seed in range(4)]
    )
    blue = torch.stack(
        [torch.from_numpy(render("a blue circle on black", seed)).permute(2, 0, 1).float() / 255 for seed in range(4)]
    )
    assert (scorer.effect(red, blue, "red") > 0.9).all()  # the probe reads rendered colours at >= 98%
    assert (scorer.effect(blue, red, "red") < -0.9).all()


def _rendered(caption, seed=0):
    from locoedit.toyworld import render

    return torch.from_numpy(render(caption, seed)).permute(2, 0, 1).float() / 255


def test_the_toy_world_reads_whether_an_image_shows_every_attribute_its_prompt_states():
    scorer = make_scorer("toyworld")
    images = torch.stack(
        [
            _rendered("a red striped circle on black"),
            _rendered("the sun on white"),
            _rendered("a blue square in the style of klimt"),
        ]
    )
    prompts = ["a red striped circle on black", "the sun on white", "a blue square in the style of klimt"]
    assert scorer.follows(images, prompts, ["", "", ""], []) == [True, True, True]
    wrong = ["a green striped circle on black", "the ocean on white", "a blue square in the style of hokusai"]
    assert scorer.follows(images, wrong, ["", "", ""], []) == [False, False, False]
    assert scorer.follows(images[:1], ["a circle"], [""], []) == [True]  # only what the prompt states counts


def test_without_a_reader_of_attributes_following_is_zero_shot_among_the_suites_concepts():
    class ChannelScorer(ConceptScorer):  # "red" / "green" / "blue": the mean of that channel
        spec = "channel"

        def score(self, images, concept):
            return images[:, ["red", "green", "blue"].index(concept)].flatten(1).mean(1)

    images = torch.zeros(3, 3, 4, 4)
    images[0, 0], images[1, 1], images[2, 2] = 1.0, 1.0, 1.0
    concepts = ["red", "green", "red"]
    assert ChannelScorer().follows(images, ["p"] * 3, concepts, ["red", "green", "blue"]) == [True, True, False]


def test_the_toy_world_scores_several_concepts_as_any_of_them():
    scorer = make_scorer("toyworld")
    images = torch.stack(
        [
            _rendered("a red circle in the style of klimt"),
            _rendered("a red circle in the style of hokusai"),
            _rendered("a red circle"),
        ]
    )
    several = scorer.score(images, "in the style of klimt, in the style of hokusai")
    expected = torch.maximum(
        scorer.score(images, "in the style of klimt"), scorer.score(images, "in the style of hokusai")
    )
    assert torch.equal(several, expected) and (several[:2] > 0.9).all() and several[2] < 0.1
    assert scorer.concept_attributes("red, circle") == {"color", "shape"}
    with pytest.raises(LocoeditError, match="unknown concept 'purple'"):
        scorer.check_concept("red, purple")


def test_the_toy_world_names_each_attribute_a_target_changes():
    scorer = make_scorer("toyworld")
    # The ocean is a blue striped square: each attribute the target states otherwise, the ocean's value and the target's.
    assert scorer.changed_attributes("the ocean", "a yellow dotted circle") == [
        ("blue", "yellow"),
        ("square", "circle"),
        ("striped", "dotted"),
    ]
    assert scorer.changed_attributes("the ocean", "a blue circle") == [("square", "circle")]  # blue stays
    assert scorer.changed_attributes("triangle", "cross") == [("triangle", "cross")]
    assert scorer.changed_attributes("in the style of hokusai", "") == []  # a removal: nothing to adopt
    assert scorer.changed_attributes("a word it never saw", "cross") == []  # left to check_concept's message
    assert PixelScorer().changed_attributes("the ocean", "a yellow dotted circle") == []
