"""Fixed views of a poster: what each computes, and test-time augmentation's average."""

import numpy as np
import pytest
import tf_keras as keras

from poster_ray.config import POSTER_VIEWS
from poster_ray.errors import PosterRayError
from poster_ray.models.views import PosterViews, on_view, with_test_views

# Three 20x20 posters, mid-grey with noise: no contrast change is clipped.
POSTERS = np.random.default_rng(0).integers(80, 176, (3, 20, 20, 3)).astype("uint8")


def views_of(posters: np.ndarray, count: int, first: int = 0) -> np.ndarray:
    return PosterViews(count, first)(posters).numpy()


def test_the_first_views_are_the_poster_and_its_mirror_image_poster_by_poster():
    views = views_of(POSTERS, 2)
    assert views.shape == (6, 20, 20, 3) and views.dtype == np.float32
    for poster, image in enumerate(POSTERS):
        np.testing.assert_allclose(views[2 * poster], image, atol=1e-3)
        np.testing.assert_allclose(views[2 * poster + 1], image[:, ::-1], atol=1e-3)


def test_a_zoom_stretches_the_middle_of_the_poster_over_the_whole_size():
    poster = np.zeros((1, 50, 50, 3), "uint8")
    poster[:, 3:-3, 3:-3] = 200  # a 3-pixel black border: 6% of 50
    zoom = POSTER_VIEWS.index(next(view for view in POSTER_VIEWS if view.name == "zoom"))
    zoomed = views_of(poster, 1, first=zoom)[0]
    assert zoomed.shape == (50, 50, 3)
    assert zoomed.min() > 150  # the border is cut off
    assert views_of(poster, 1)[0].min() == 0  # the poster itself keeps it


def test_a_contrast_view_scales_each_poster_about_its_own_mean():
    index = next(i for i, view in enumerate(POSTER_VIEWS) if view.contrast != 1 and not view.mirror)
    view = views_of(POSTERS, 1, first=index)
    for poster, image in zip(view, POSTERS.astype("float32"), strict=True):
        assert poster.mean() == pytest.approx(image.mean(), abs=1e-2)
        assert poster.std() == pytest.approx(POSTER_VIEWS[index].contrast * image.std(), rel=1e-4)


def test_every_view_keeps_the_size_and_pixels_in_range():
    views = views_of(POSTERS, len(POSTER_VIEWS))
    assert views.shape == (3 * len(POSTER_VIEWS), 20, 20, 3)
    assert views.min() >= 0 and views.max() <= 255
    distinct = {views[i].tobytes() for i in range(len(POSTER_VIEWS))}
    assert len(distinct) == len(POSTER_VIEWS)  # no two views of a poster alike


def tiny_model() -> keras.Model:
    """Something that tells a poster from its mirror image: a dense layer on pixels."""
    inputs = keras.Input(shape=POSTERS.shape[1:])
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(4, activation="sigmoid")(flat)
    return keras.Model(inputs, outputs)


def test_test_time_augmentation_averages_the_model_over_the_views():
    model = tiny_model()
    alone = model.predict(POSTERS, verbose=0)
    mirrored = model.predict(POSTERS[:, :, ::-1], verbose=0)
    averaged = with_test_views(model, 2).predict(POSTERS, verbose=0)
    assert not np.allclose(alone, mirrored, atol=1e-3)
    np.testing.assert_allclose(averaged, (alone + mirrored) / 2, atol=1e-5)
    assert with_test_views(model, 1) is model


def test_a_model_on_one_view_sees_that_view_of_each_poster():
    model = tiny_model()
    np.testing.assert_allclose(
        on_view(model, 1).predict(POSTERS, verbose=0),
        model.predict(POSTERS[:, :, ::-1], verbose=0),
        atol=1e-5,
    )
    assert on_view(model, 0) is model


def test_views_past_the_table_are_refused():
    with pytest.raises(PosterRayError, match=f"there are {len(POSTER_VIEWS)}"):
        PosterViews(2, first=len(POSTER_VIEWS) - 1)
