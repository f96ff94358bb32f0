"""Whose classes: a model's classes named by the user (`class_indices`)."""

import pytest

from zfnet.analyses.classes import class_indices

IMAGENET_LIKE = ["tench, Tinca tinca", "tabby, tabby cat", "tiger cat", "Egyptian cat",
                 "crane", "crane"]  # ImageNet has two cranes (a bird, a machine)


def test_a_class_by_its_name_a_synonym_or_its_number() -> None:
    assert class_indices(["tabby, tabby cat"], IMAGENET_LIKE) == [1]  # the whole name
    assert class_indices(["TIGER CAT", "tench", "Tinca tinca"], IMAGENET_LIKE) == [2, 0]
    assert class_indices(["3", "tabby"], IMAGENET_LIKE) == [3, 1]
    # a value that names no class but holds commas: a list of them
    assert class_indices(["tiger cat,Egyptian cat"], IMAGENET_LIKE) == [2, 3]
    assert class_indices(["7"], None) == [7]  # unnamed classes: by number


@pytest.mark.parametrize("wanted,message", [
    (["tigr cat"], "class 'tigr cat' is not one of resnet's 6 classes; did you mean 'tiger cat'"),
    (["zebra"], "class 'zebra' is not one of resnet's 6 classes (tench, Tinca tinca, tabby, "
                "tabby cat, tiger cat, ...); give a name or a number 0 to 5"),
    (["6"], "class 6 is outside resnet's 6 classes (0 to 5)"),
    (["-1"], "class -1 is outside resnet's 6 classes (0 to 5)"),
    (["crane"], "class 'crane' names 2 of resnet's classes: 'crane' (4), 'crane' (5); give one "
                "by its whole name or its number"),
    (["tabby,zebra"], "class 'zebra' is not one of"),
    # a word of several names: those names first, not names spelled like it ('crane')
    (["cat"], "did you mean 'tabby, tabby cat' or 'tiger cat' or 'Egyptian cat'?"),
    (["tench fish"], "did you mean 'tench, Tinca tinca'?"),
    (["tig"], "did you mean 'tiger cat'?"),  # the start of a word
])
def test_what_names_no_class_or_several_is_refused(wanted, message) -> None:
    with pytest.raises(ValueError) as e:
        class_indices(wanted, IMAGENET_LIKE, "resnet")
    assert message in str(e.value)


def test_names_without_the_models_class_names() -> None:
    with pytest.raises(ValueError, match=r"m's classes have no names \(--labels FILE names "
                                         r"them, one a line\); give class 'tabby' by its number"):
        class_indices(["tabby"], None, "m")


def test_a_number_past_an_unnamed_models_classes_is_a_class_error() -> None:
    """A 5-class model without class names: --class 7 is refused as a class (not as 'map 7
    outside the 5 maps of fc'); 4 is its last class."""
    assert class_indices(["4"], None, "m", outputs=5) == [4]
    with pytest.raises(ValueError, match=r"^class 7 is outside m's 5 classes \(0 to 4\)$"):
        class_indices(["7"], None, "m", outputs=5)
    with pytest.raises(ValueError, match=r"^class -2: classes are numbered from 0$"):
        class_indices(["-2"], None, "m")


def test_a_short_class_list_is_shown_whole() -> None:
    """Three classes are all shown, without a '...' that suggests more."""
    with pytest.raises(ValueError, match=r"'s 3 classes \(cat, drink, space\); give a name"):
        class_indices(["dog"], ["cat", "drink", "space"], "run")
