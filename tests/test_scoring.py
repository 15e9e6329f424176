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
    assert torch.allclose(scorer.effect(images, images.flip(0), "van gogh"),
                          scorer.score(images, "van gogh") - scorer.score(images.flip(0), "van gogh"))
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


def test_pixel_effect_is_mean_absolute_difference():
    reference = torch.zeros(2, 3, 4, 4)
    images = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.5)])
    assert PixelScorer().effect(reference, images, "anything").tolist() == [0.0, 0.5]


def test_unknown_scorers_and_missing_clip_weights_are_explained(tmp_path):
    with pytest.raises(LocoeditError, match="unknown scorer 'fid'"):
        make_scorer("fid")
    with pytest.raises(LocoeditError, match="CLIP weights .* are not available"):
        make_scorer(f"clip:{tmp_path / 'nothing-here'}")


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
    red = torch.stack([torch.from_numpy(render("a red circle on black", seed)).permute(2, 0, 1).float() / 255
                       for seed in range(4)])
    blue = torch.stack([torch.from_numpy(render("a blue circle on black", seed)).permute(2, 0, 1).float() / 255
                        for seed in range(4)])
    assert (scorer.effect(red, blue, "red") > 0.9).all()  # the probe reads rendered colours at >= 98%
    assert (scorer.effect(blue, red, "red") < -0.9).all()
