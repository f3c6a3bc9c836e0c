"""The topic filter index agrees with MQTT 3.1.1 matching, checked against a direct matcher."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from geofleet.domain.topics import TopicFilterIndex
from tests.helpers import examples


def reference_match(topic: str, topic_filter: str) -> bool:
    """MQTT 3.1.1 section 4.7, written directly from the spec."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels) or level not in ("+", topic_levels[i]):
            return False
    return len(filter_levels) == len(topic_levels)


def test_examples_from_the_spec() -> None:
    index = TopicFilterIndex()
    for f in ["sport/tennis/player1/#", "sport/#", "#", "+/+", "/+", "+", "sport/+/player1", "$SYS/#", "+/monitor"]:
        index.add(f)
    assert set(index.match("sport/tennis/player1")) == {"sport/tennis/player1/#", "sport/#", "#", "sport/+/player1"}
    assert set(index.match("sport")) == {"sport/#", "#", "+"}
    assert set(index.match("/finance")) == {"#", "+/+", "/+"}
    assert set(index.match("$SYS/monitor")) == {"$SYS/#"}, "wildcards at the first level skip $ topics"


def test_discard_removes_only_that_filter_and_prunes() -> None:
    index = TopicFilterIndex()
    for f in ["a/b", "a/b/c", "a/+"]:
        index.add(f)
    index.add("a/b")
    assert len(index) == 3
    index.discard("a/b")
    index.discard("never/added")
    assert set(index.match("a/b")) == {"a/+"}
    assert index.match("a/b/c") == ["a/b/c"]
    index.discard("a/b/c")
    index.discard("a/+")
    assert len(index) == 0
    assert index._root.children == {}


levels = st.sampled_from(["a", "b", "$x", ""])
filter_levels = st.sampled_from(["a", "b", "$x", "", "+"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    parts = draw(st.lists(filter_levels, min_size=1, max_size=4))
    if draw(st.booleans()):
        parts.append("#")
    return "/".join(parts)


@settings(max_examples=examples(300))
@given(st.lists(filters(), max_size=12), st.lists(filters(), max_size=4),
       st.lists(st.lists(levels, min_size=1, max_size=5).map("/".join), min_size=1, max_size=8))
def test_index_matches_like_the_spec(added: list[str], removed: list[str], topics: list[str]) -> None:
    index = TopicFilterIndex()
    for f in added:
        index.add(f)
    for f in removed:
        index.discard(f)
    live = set(added) - set(removed)
    for topic in topics:
        found = index.match(topic)
        assert len(found) == len(set(found)), "each filter at most once"
        assert set(found) == {f for f in live if reference_match(topic, f)}, topic
