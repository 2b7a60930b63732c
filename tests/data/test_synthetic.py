import numpy as np
import pytest

from cyborgs.data.synthetic import (
    SEMANTIC_CLASSES,
    STUFF_CLASSES,
    THING_CLASSES,
    THING_SPECS,
    generate_scene,
    generate_scenes,
)


@pytest.fixture(scope="module")
def scenes():
    return list(generate_scenes(30, seed=5, height=(64, 96), width=(80, 128)))


def test_class_lists():
    assert len(THING_CLASSES) >= 10 and len(set(THING_CLASSES)) == len(THING_CLASSES)
    assert len(STUFF_CLASSES) >= 4
    assert SEMANTIC_CLASSES == THING_CLASSES + STUFF_CLASSES
    # categories differ in shape; colour families alone do not separate all of them
    assert len({s.shape for s in THING_SPECS}) == len(THING_SPECS)


def test_same_seed_same_scene_and_independent_of_stream_position():
    a = list(generate_scenes(3, seed=1, height=(64, 80), width=(64, 80)))
    b = list(generate_scenes(1, seed=1, height=(64, 80), width=(64, 80), start=2))
    assert np.array_equal(a[2].image, b[0].image)
    assert np.array_equal(a[2].instance_map, b[0].instance_map)
    c = list(generate_scenes(3, seed=2, height=(64, 80), width=(64, 80)))
    assert not np.array_equal(a[0].image, c[0].image)


def test_ground_truth_consistent(scenes):
    for s in scenes:
        h, w = s.height, s.width
        assert s.image.dtype == np.uint8 and s.image.shape == (h, w, 3)
        assert s.semantic.shape == (h, w) and s.instance_map.shape == (h, w)
        n = len(s.instances)
        assert 1 <= n <= 12
        assert set(np.unique(s.instance_map)) <= set(range(n + 1))
        min_area = max(16, int(0.002 * h * w))
        for j, inst in enumerate(s.instances):
            assert np.array_equal(inst.mask, s.instance_map == j + 1)
            assert inst.area == inst.mask.sum() >= min_area
            assert inst.area <= inst.full_area
            ys, xs = np.nonzero(inst.mask)
            assert inst.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert np.all(s.semantic[inst.mask] == inst.category_id)
        # pixels without a thing carry stuff labels
        stuff = s.semantic[s.instance_map == 0]
        assert np.all((stuff >= len(THING_CLASSES)) & (stuff < len(SEMANTIC_CLASSES)))


def test_scene_statistics(scenes):
    counts = [len(s.instances) for s in scenes]
    assert np.mean([c >= 3 for c in counts]) > 0.9
    cats = {i.category_id for s in scenes for i in s.instances}
    assert len(cats) == len(THING_CLASSES)
    # occlusion and scale variation actually happen
    fractions = [i.visible_fraction for s in scenes for i in s.instances]
    assert min(fractions) < 0.7
    areas = [i.area / (s.height * s.width) for s in scenes for i in s.instances]
    assert max(areas) / min(areas) > 20
    assert len({int(x) for s in scenes for x in np.unique(s.semantic)}) > len(THING_CLASSES) + 3


def test_colour_families_are_learnable_but_not_trivial(scenes):
    # mean RGB of each instance: nearest class mean beats chance by far, but is not perfect
    feats, labels = [], []
    for s in scenes:
        for i in s.instances:
            feats.append(s.image[i.mask].mean(0))
            labels.append(i.category_id)
    feats, labels = np.array(feats), np.array(labels)
    means = np.stack([feats[labels == c].mean(0) for c in range(len(THING_CLASSES))])
    pred = np.argmin(((feats[:, None] - means[None]) ** 2).sum(-1), axis=1)
    acc = (pred == labels).mean()
    assert 2.0 / len(THING_CLASSES) < acc < 0.9


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="at least 16x16"):
        generate_scene(rng, 8, 64)
    with pytest.raises(ValueError, match="num_objects"):
        generate_scene(rng, 64, 64, num_objects=(5, 2))
