import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emit.data.synthetic import COLOURS, DECORATIONS
from emit.text.colours import COLOUR_CLASSES, COLOUR_WORDS, OTHER_COLOUR, colour_class, colour_index


@pytest.mark.parametrize(("tag", "expected"), [
    # the longest colour word wins over the words inside it
    ("藏青色", "navy"),  # not 青 (teal)
    ("藏蓝", "navy"),  # not 蓝 (blue)
    ("深蓝色", "navy"),
    ("米白", "white"),  # not 米 (beige)
    ("米白色", "white"),
    ("奶白色", "white"),  # not 奶 (beige)
    ("枣红色", "maroon"),  # not 红
    ("酒红", "maroon"),
    ("玫红色", "pink"),
    ("粉红色", "pink"),
    ("银灰色", "grey"),  # not 银 (silver)
    ("橄榄绿", "olive"),  # not 橄榄 alone, not 绿
    ("军绿色", "olive"),
    ("墨绿色", "green"),
    ("蓝绿色", "teal"),  # not 蓝 or 绿
    ("咖啡色", "brown"),
    ("卡其色", "khaki"),
    ("姜黄色", "yellow"),
    # simple colours
    ("黑色", "black"), ("白色", "white"), ("红色", "red"), ("蓝色", "blue"), ("灰色", "grey"),
    # decorated tags, as on Taobao
    ("K38893枣红色", "maroon"),
    ("【黑色】", "black"),
    ("黑色【加绒】", "black"),
    ("2801-藏青色", "navy"),
    ("米白色T恤", "white"),
    ("浅蓝色 XL", "blue"),
    # no colour word
    ("加绒", OTHER_COLOUR),
    ("XL", OTHER_COLOUR),
    ("K38893", OTHER_COLOUR),
    ("", OTHER_COLOUR),
    ("【加厚款】", OTHER_COLOUR),
])
def test_colour_class(tag, expected):
    assert colour_class(tag) == expected
    assert COLOUR_CLASSES[colour_index(tag)] == expected


def test_classes_are_sorted_and_other_is_last():
    assert COLOUR_CLASSES[-1] == OTHER_COLOUR
    assert COLOUR_CLASSES[:-1] == sorted(set(COLOUR_WORDS.values()))
    assert len(set(COLOUR_CLASSES)) == len(COLOUR_CLASSES)


def test_every_colour_word_maps_to_its_own_class():
    for word, cls in COLOUR_WORDS.items():
        assert colour_class(word) == cls, word
        assert colour_class(word + "色") == cls, word


def test_synthetic_colours_are_distinct_classes():
    # the demo's colours must be separable by the baseline, each into its own class
    classes = [colour_class(name) for name, _ in COLOURS]
    assert OTHER_COLOUR not in classes
    assert len(set(classes)) == len(classes)
    assert dict(zip((n for n, _ in COLOURS), classes, strict=True))["藏青色"] == "navy"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(COLOUR_WORDS)), st.sampled_from(DECORATIONS),
       st.integers(1000, 99999))
def test_decorations_do_not_change_the_class(word, pattern, code):
    tag = pattern.format(c=word + "色", code=code)
    assert colour_class(tag) == COLOUR_WORDS[word]


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=12))
def test_class_is_always_known(tag):
    cls = colour_class(tag)
    assert cls in COLOUR_CLASSES
    words = [w for w in COLOUR_WORDS if w in tag]
    if not words:
        assert cls == OTHER_COLOUR
    else:  # the class of one of the longest contained words
        longest = max(len(w) for w in words)
        assert cls in {COLOUR_WORDS[w] for w in words if len(w) == longest}
