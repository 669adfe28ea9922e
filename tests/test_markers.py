import pytest

from dasd.markers import DEFAULT_MARKERS, count_markers, find_markers


def test_whole_words_only_and_case_insensitive():
    text = "Wait, checking 7*3. Hmm... I check again; waiting is not a marker. MAYBE."
    assert [m.group(0) for m in find_markers(text)] == ["Wait", "Hmm", "check", "MAYBE"]


def test_phrases_match_across_whitespace():
    assert count_markers("let me  check again", ["check again"]) == 1
    assert count_markers("recheck again", ["check again"]) == 0


def test_counts_every_occurrence():
    assert count_markers("wait wait, hmm: wait") == 4
    assert count_markers("nums: 3 7 8\n7*3=21") == 0


def test_default_list_is_the_papers():
    assert set(DEFAULT_MARKERS) == {
        "wait", "hmm", "perhaps", "maybe", "actually",
        "alternatively", "seems", "might", "likely", "check",
    }


def test_empty_marker_list_is_an_error():
    with pytest.raises(ValueError, match="markers is empty"):
        count_markers("wait", [])
