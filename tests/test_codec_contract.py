"""What every codec declares, and a throwaway codec that the rest of the code serves
without a line changed outside its own definition."""

from __future__ import annotations

import mido
import pytest

from ensemble import codecs
from ensemble.codecs.midi_notes import Note
from ensemble.codecs.notes import NotesCodec
from ensemble.corpora import Item, Options, Report, codec_reads, convert_items
from ensemble.generate import prime_tokens
from ensemble.server.events import NotServable, adapter_for

INPUT_KINDS = {"text", "abc", "notes", "touch", "gestures"}
SOURCES = {"abc", "text", "csv", "midi", "score", "session"}


def every_codec():
    from ensemble.codecs.text import TextCodec

    for name in codecs.names():
        yield TextCodec("abc\n") if name == "text" else codecs.load({"name": name})


@pytest.mark.parametrize("codec", list(every_codec()), ids=lambda c: c.name)
def test_every_codec_declares_what_the_rest_of_the_code_needs(codec):
    assert isinstance(codec, codecs.Codec)
    assert codec.input_kind in INPUT_KINDS and set(codec.sources) <= SOURCES and codec.sources
    assert codec_reads(codec).startswith(f"the {codec.name} codec reads ")
    if codec.input_kind == "notes":
        assert callable(codec.encode_notes) and callable(codec.encode_midi) and callable(codec.decode_midi)
    if codec.live is None:
        with pytest.raises(NotServable, match="cannot be served live"):
            adapter_for(codec)
    else:
        assert adapter_for(codec).kind == codec.live


class HighNotes(NotesCodec):
    """A throwaway codec: the notes codec over the top two octaves only."""

    name = "high-notes"

    def __init__(self):
        super().__init__(low_pitch=72, high_pitch=96)

    def describe(self) -> dict:
        return {"name": self.name}


def test_a_new_codec_is_its_module_and_its_registration(tmp_path):
    codecs.register(HighNotes.name, lambda description: HighNotes())
    codec = codecs.load({"name": "high-notes"})
    notes = [Note(0.5 * i, 0.5 * i + 0.4, 72 + i, 90) for i in range(8)]
    pieces = convert_items(codec, [Item("scale", "notes", notes)], Options(), Report())  # prepare
    assert len(pieces) == 1 and len(pieces[0].tokens) == 16  # a note-on and a note-off each
    adapter = adapter_for(codec)  # the server
    assert adapter.kind == "note" and adapter.event(adapter.token(0.1, (80, 90))).values[0] == 80
    midi = mido.MidiFile()  # generate, primed with MIDI
    track = mido.MidiTrack()
    track.append(mido.Message("note_on", note=80, velocity=90, time=0))
    track.append(mido.Message("note_off", note=80, velocity=0, time=240))
    midi.tracks.append(track)
    midi.save(tmp_path / "prime.mid")
    assert len(prime_tokens(codec, str(tmp_path / "prime.mid"))) == 2
    assert codec.decode_midi(pieces[0].tokens).length > 3.0
