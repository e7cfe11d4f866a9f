"""The mini corpus's slot-filling set: spoken commands with slots in SUPERB's Audio SNIPS layout.

Seven intents as in SNIPS, each with phrasings of our own whose slot values come from small word lists, so
a short run can learn to spell both the words and the slot brackets. The talkers carry the names of SUPERB's
Polly voices (8 train, 4 valid, 4 test, in the same roles), so our shipped config's speaker lists serve the
real and the synthetic set alike; each name is an espeak voice of the same gender here. Test talkers
never occur in training; a test command's wording may (as in SNIPS), its talker and recording do not.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from .corpus import CorpusError, Preset, _Build, _draw_voices, _finish

# SUPERB's Audio SNIPS talkers per split (snips.yaml), with the voice's gender
SNIPS_SPEAKERS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "train": (("Ivy", "F"), ("Joanna", "F"), ("Joey", "M"), ("Justin", "M"), ("Kendra", "F"), ("Kimberly", "F"),
              ("Matthew", "M"), ("Salli", "F")),
    "valid": (("Aditi", "F"), ("Amy", "F"), ("Geraint", "M"), ("Nicole", "F")),
    "test": (("Brian", "M"), ("Emma", "F"), ("Raveena", "F"), ("Russell", "M")),
}
SPLITS = ("train", "valid", "test")

SLOT_VALUES: Dict[str, Tuple[str, ...]] = {
    "artist": ("MADONNA", "ELTON JOHN", "NINA SIMONE", "BOB MARLEY", "FRANK SINATRA", "ADELE"),
    "music_genre": ("JAZZ", "BLUES", "TECHNO", "FOLK", "REGGAE", "OPERA"),
    "service": ("SPOTIFY", "PANDORA", "DEEZER", "YOUTUBE"),
    "playlist": ("ROAD TRIP", "MORNING COFFEE", "WORKOUT", "SUNDAY CHILL", "PARTY TIME"),
    "rating_value": ("ONE", "TWO", "THREE", "FOUR", "FIVE"),
    "object_name": ("THE HOBBIT", "LITTLE WOMEN", "DUNE", "MOBY DICK", "TREASURE ISLAND"),
    "movie_name": ("THE GODFATHER", "ALIEN", "JAWS", "VERTIGO", "CASABLANCA"),
    "city": ("PARIS", "TOKYO", "BOSTON", "MADRID", "CHICAGO", "BERLIN", "DENVER"),
    "party_size_number": ("TWO", "FOUR", "SIX", "EIGHT"),
    "timeRange": ("TONIGHT", "TOMORROW", "THIS WEEKEND", "NEXT MONDAY"),
}

# intent -> phrasings; {slot} marks where a value of that slot is said
TEMPLATES: Dict[str, Tuple[str, ...]] = {
    "PlayMusic": ("PLAY {artist}", "PLAY SOME {music_genre} MUSIC", "PLAY {artist} ON {service}"),
    "AddToPlaylist": ("ADD {artist} TO MY {playlist} PLAYLIST", "PUT THIS SONG ON {playlist}"),
    "RateBook": ("RATE THIS BOOK {rating_value} STARS", "GIVE {object_name} {rating_value} POINTS"),
    "SearchScreeningEvent": ("FIND MOVIE TIMES IN {city}", "WHEN IS {movie_name} PLAYING"),
    "BookRestaurant": ("BOOK A TABLE FOR {party_size_number} IN {city}", "RESERVE A RESTAURANT FOR {timeRange}"),
    "GetWeather": ("WHAT IS THE WEATHER IN {city} {timeRange}", "WILL IT RAIN IN {city}"),
    "SearchCreativeWork": ("FIND THE BOOK {object_name}", "SHOW ME THE FILM {movie_name}"),
}


def fill(template: str, values: Dict[str, str]) -> Tuple[List[str], List[str]]:
    """(words, one tag per word) of ``template`` with its slots filled from ``values``."""
    words: List[str] = []
    tags: List[str] = []
    for part in template.split():
        if part.startswith("{") and part.endswith("}"):
            slot = part[1:-1]
            value = values[slot].split()
            words += value
            tags += [slot] * len(value)
        else:
            words.append(part)
            tags.append("O")
    return words, tags


def iob_line(uid: str, words: Sequence[str], tags: Sequence[str], intent: str) -> str:
    """A line of ``all.iob.snips.txt``: tags padded with O for BOS and the intent for EOS."""
    return f"{uid} BOS {' '.join(words)} EOS\tO {' '.join(tags)} {intent}"


def build_snips(b: _Build, p: Preset) -> Dict[str, dict]:
    counts = dict(zip(SPLITS, p.sf_speakers))
    for split, n in counts.items():
        if not 1 <= n <= len(SNIPS_SPEAKERS[split]):
            raise CorpusError(f"sf: {n} {split} talkers asked for; SNIPS has 1..{len(SNIPS_SPEAKERS[split])}")
    talkers = [(split, name, gender) for split in SPLITS for name, gender in SNIPS_SPEAKERS[split][:counts[split]]]
    voices = _draw_voices(b.rng("voices"), len(talkers), genders=[g for _, _, g in talkers], acoustics=p.acoustics)
    intents = sorted(TEMPLATES)
    jobs, lines = [], []
    files = {split: 0 for split in SPLITS}
    for (split, name, _), voice in zip(talkers, voices):
        for k in range(p.sf_utts_per_speaker):
            rng = b.rng(name, k)
            intent = intents[(k + int(rng.integers(len(intents)))) % len(intents)]
            template = TEMPLATES[intent][int(rng.integers(len(TEMPLATES[intent])))]
            values = {slot: options[int(rng.integers(len(options)))] for slot, options in SLOT_VALUES.items()}
            words, tags = fill(template, values)
            uid = f"{name}-snips-{split}-{files[split]}"
            files[split] += 1
            jobs.append((f"{split}/{uid}.wav", voice.vary(rng).request(" ".join(words).lower())))
            lines.append(iob_line(uid, words, tags, intent))
    for rel, audio in b.speak(jobs, "commands"):
        b.write(rel, _finish(audio, b.rng("finish", rel), acoustics=p.acoustics))
    b.write_text("all.iob.snips.txt", lines)
    # the recipe's tokenizer skips the first line, where SNIPS's frequency-sorted list has O
    b.write_text("slots.txt", ["O", *sorted(SLOT_VALUES)])
    return {"sf": {"paths": {"path": "."}, "files": files, "slots": len(SLOT_VALUES), "intents": len(intents)}}
