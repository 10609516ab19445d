"""Reference pipeline: a photographed page of a language book becomes a small lesson.

`language_page` runs six resumable steps (`ctx.step`), so a retry, a killed worker or a redeploy
resumes at the first unfinished one and the LLM is never paid twice for the same step:

    ocr        Tesseract reads the page (pytesseract, in a thread)
    translate  the text in the target language (an OpenAI-compatible chat API)
    words      words and their lemmas, most frequent first (simplemma, offline)
    sentences  an example sentence for each top lemma, with its translation (the chat API)
    audio      espeak-ng reads each example sentence (or, without an LLM, the page's first
               sentences) into a WAV file, stored as a job artifact the page links to
    store      the whole lesson as `lesson.json`, another artifact

With no LLM configured (PGMQ_WORKER_LLM_BASE_URL unset), `translate` and `sentences` finish as
`{"skipped": "<why>"}` and the result lists them under `skipped`: nothing is made up. Tesseract
and espeak-ng are programs (`TESSERACT`, `ESPEAK`: Debian tesseract-ocr with tesseract-ocr-<code>
for each language's data, and espeak-ng; deploy/Dockerfile installs them); the module imports
without them and a job that needs a missing one fails with what to install.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import subprocess
import tempfile
import warnings
import wave
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, Self

import pytesseract
import simplemma
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from handlers.llm import NOT_CONFIGURED, LlmSettings, chat
from handlers.programs import Program
from handlers.provider import ProviderError
from handlers.report import split_sentences
from handlers.text import WORD
from queues import Contract
from worker import Context, Permanent, handler

STEPS: Final = ("ocr", "translate", "words", "sentences", "audio", "store")
# A base64 image grows by 4/3 and the whole message must stay under pgmq's 1 MB payload limit.
MAX_IMAGE_BYTES: Final = 700 * 1024
MAX_IMAGE_BASE64: Final = 4 * ((MAX_IMAGE_BYTES + 2) // 3)
MAX_PIXELS: Final = 25_000_000  # a 5000x5000 page; Tesseract's time grows with the area
MAX_SPOKEN_CHARS: Final = 400  # per audio clip
OCR_TIMEOUT_S: Final = 90
LLM_STEP_TIMEOUT_S: Final = 300  # includes waiting for a slot of the shared `llm` limit
DATA_URL = re.compile(r"^data:image/[a-z]+;base64,", re.IGNORECASE)
HYPHENATED = re.compile(r"(\w)-\n(\w)")
SAMPLE: Final = "page_de.png"
# pytesseract runs `tesseract` from PATH (its default command); espeak-ng is run by `speak`.
TESSERACT: Final = Program("tesseract", "tesseract-ocr")
ESPEAK: Final = Program("espeak-ng", "espeak-ng")

LanguageCode = Literal["de", "en", "fr", "es", "it"]


@dataclass(frozen=True, slots=True)
class Language:
    """One language as each tool names it, and the lemmas too common to teach."""

    name: str
    tesseract: str  # Tesseract's language code; its data is Debian's `tesseract_data(code)`
    espeak: str  # espeak-ng voice
    stopwords: frozenset[str]


def tesseract_data(code: str) -> str:
    """The Debian package of Tesseract's trained data for a language code (`deu`: tesseract-ocr-deu)."""
    return f"{TESSERACT.package}-{code}"


def _language(name: str, tesseract: str, espeak: str, stopwords: str) -> Language:
    return Language(name, tesseract, espeak, frozenset(stopwords.split()))


# simplemma takes the ISO 639-1 code itself (the key). Stopwords are lemmas, in lower case.
LANGUAGES: Final[dict[str, Language]] = {
    "de": _language(
        "German",
        "deu",
        "de",
        """der die das ein eine und oder aber doch denn sondern in im an am auf aus bei mit nach von vor
        zu zum zur über unter durch für gegen ohne um bis seit als wie wenn dass ob weil sein haben werden
        können müssen sollen wollen dürfen mögen ich du er sie es wir ihr mich dich sich uns euch mein dein
        unser euer nicht kein auch noch schon nur sehr so da dort hier dann jetzt man was wer wo ja nein""",
    ),
    "en": _language(
        "English",
        "eng",
        "en",
        """the a an and or but if of in on at to for with from by about as into than then so not no be have
        do will would can could shall should may might must i you he she it we they me him her us them my
        your his its our their this that these those there here what which who whom when where why how all
        any some very just also too only""",
    ),
    "fr": _language(
        "French",
        "fra",
        "fr",
        """le la les un une des du de d l et ou mais donc car ni à au aux en dans sur sous par pour avec sans
        chez être avoir faire aller je tu il elle on nous vous ils elles me te se lui leur mon ton son notre
        votre ce cet cette ces qui que quoi dont où ne pas plus très y""",
    ),
    "es": _language(
        "Spanish",
        "spa",
        "es",
        """el la los las un una unos unas y o pero de del a al en con por para sin sobre entre ser estar
        haber tener hacer ir yo tú él ella nosotros vosotros ellos ellas me te se le lo nos os les mi tu su
        nuestro vuestro este ese aquel que quien donde cuando como no sí muy ya""",
    ),
    "it": _language(
        "Italian",
        "ita",
        "it",
        """il lo la i gli le un uno una e o ma di del della a al alla da dal in nel con su per tra fra essere
        avere fare andare io tu lui lei noi voi loro mi ti si ci vi mio tuo suo nostro vostro questo quello
        che chi dove quando come non più molto già""",
    ),
}


class PageUploaded(BaseModel):
    """Turn a page (`image_base64`, else the sample German page) into text, translation, words and audio."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "examples": [{"source_language": "de", "target_language": "en", "words": 8, "sentences": 3}]
        },
    )
    image_base64: str | None = Field(
        default=None,
        description=(
            f"A PNG or JPEG page of at most {MAX_IMAGE_BYTES // 1024} KB, base64 (a data: URL works too). "
            "Absent: the sample German page the repository ships."
        ),
    )
    source_language: LanguageCode = Field(default="de", description="The language of the page.")
    target_language: LanguageCode = Field(default="en", description="The learner's language.")
    words: int = Field(default=10, ge=1, le=50, description="Lemmas to list, most frequent first.")
    sentences: int = Field(default=3, ge=1, le=10, description="Example sentences, each with audio.")

    @field_validator("image_base64")
    @classmethod
    def _decodes(cls, value: str | None) -> str | None:
        if value is not None:
            decode_image(value)
        return value

    @model_validator(mode="after")
    def _languages(self) -> Self:
        if self.source_language == self.target_language:
            raise ValueError("source_language and target_language must differ")
        if self.image_base64 is None and self.source_language != "de":
            raise ValueError(
                f"without image_base64 the sample page is read, and it is German: send an image to read "
                f"{LANGUAGES[self.source_language].name}"
            )
        return self

    def image(self) -> bytes:
        """The page's PNG or JPEG bytes."""
        return decode_image(self.image_base64) if self.image_base64 is not None else sample_page()


LANGUAGE_PAGE: Final = Contract("language_page", PageUploaded)


class Translation(BaseModel):
    """What the LLM answers for `translate`."""

    translation: str = Field(min_length=1, max_length=50_000)


class Example(BaseModel):
    """One example sentence from the LLM."""

    lemma: str = Field(min_length=1, max_length=100)
    sentence: str = Field(min_length=1, max_length=MAX_SPOKEN_CHARS)
    translation: str = Field(min_length=1, max_length=1000)


class Examples(BaseModel):
    """What the LLM answers for `sentences`."""

    sentences: list[Example] = Field(min_length=1, max_length=50)


# --8<-- [start:handler]
@handler(
    LANGUAGE_PAGE, max_attempts=5, visibility_timeout=60, timeout=timedelta(minutes=15), steps=list(STEPS)
)
async def language_page(payload: PageUploaded, ctx: Context) -> dict[str, Any]:
    """OCR, translation, lemmas, example sentences and their audio for one page."""
    settings = LlmSettings()  # read when the job runs: a redeploy with a key applies to the next job
    source, target = LANGUAGES[payload.source_language], LANGUAGES[payload.target_language]
    ocr = await ctx.step("ocr", read_page, payload.image(), source.tesseract, timeout=OCR_TIMEOUT_S + 10)
    text: str = ocr["text"]
    translation = await ctx.step(
        "translate", translate, ctx, settings, text, source, target, timeout=LLM_STEP_TIMEOUT_S
    )
    words = await ctx.step("words", lemmas, text, payload.source_language, payload.words)
    top = [w["lemma"] for w in words["words"][: payload.sentences]]
    examples = await ctx.step(
        "sentences", example_sentences, ctx, settings, top, source, target, timeout=LLM_STEP_TIMEOUT_S
    )
    if "skipped" in examples:  # no example sentences: read the page's own first sentences aloud
        spoken = [s[:MAX_SPOKEN_CHARS] for s in split_sentences(" ".join(text.split()))[: payload.sentences]]
    else:
        spoken = [e["sentence"] for e in examples["sentences"]]
    audio = await ctx.step("audio", speak_all, ctx, spoken, source.espeak, timeout=120)
    skipped = {
        name: out["skipped"]
        for name, out in (("translate", translation), ("sentences", examples))
        if "skipped" in out
    }
    lesson = {
        "source_language": payload.source_language,
        "target_language": payload.target_language,
        "text": text,
        "translation": translation.get("translation"),
        "words": words["words"],
        "word_count": words["tokens"],
        "sentences": examples.get("sentences", []),
        "audio": audio["clips"],
        "skipped": skipped,
    }
    stored = await ctx.step("store", store_lesson, ctx, lesson)
    return {**lesson, "lesson_url": stored["url"]}


# --8<-- [end:handler]


# -- input ------------------------------------------------------------------------------------------


def decode_image(value: str) -> bytes:
    """The PNG or JPEG in a base64 string (or data: URL); ValueError saying what is wrong."""
    value = DATA_URL.sub("", value.strip(), count=1)
    if len(value) > MAX_IMAGE_BASE64 + 4:  # + padding slack: decoding says the exact size below
        raise ValueError(
            f"the image is about {len(value) * 3 // 4} bytes, over the {MAX_IMAGE_BYTES}-byte limit"
        )
    try:
        data = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("image_base64 is not valid base64") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"the image is {len(data)} bytes, over the {MAX_IMAGE_BYTES}-byte limit")
    if not data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        raise ValueError("image_base64 is not a PNG or JPEG image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ValueError(f"the image is {width}x{height} pixels, over {MAX_PIXELS} pixels")
                image.verify()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        raise ValueError(f"image_base64 is not a readable PNG or JPEG image: {exc}") from None
    return data


def sample_page() -> bytes:
    """The sample German page (handlers/samples/page_de.png, made by make_sample.py)."""
    return resources.files("handlers").joinpath("samples").joinpath(SAMPLE).read_bytes()


# -- steps ------------------------------------------------------------------------------------------


def read_page(image: bytes, language: str) -> dict[str, Any]:
    """The page's text by Tesseract: hyphenated line ends joined, lines joined into paragraphs."""
    try:
        installed = pytesseract.get_languages(config="")
    except pytesseract.TesseractNotFoundError:
        raise TESSERACT.missing() from None
    if language not in installed:
        raise Permanent(
            f"tesseract has no {language!r} language data: apt-get install {tesseract_data(language)}"
        )
    with Image.open(io.BytesIO(image)) as page:
        page.load()
        raw = pytesseract.image_to_string(page, lang=language, timeout=OCR_TIMEOUT_S)
    text = HYPHENATED.sub(r"\1\2", raw)
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    text = "\n\n".join(p for p in paragraphs if p)
    if not text:
        raise Permanent("no text found on the page: is it printed text, in the source_language?")
    return {"text": text, "characters": len(text), "tesseract_language": language}


async def translate(
    ctx: Context, settings: LlmSettings, text: str, source: Language, target: Language
) -> dict[str, Any]:
    """The text in the target language, or why it was skipped."""
    if not settings.configured:
        return {"skipped": NOT_CONFIGURED}
    system = (
        f"You translate {source.name} text into {target.name} for a language learner. Keep the meaning "
        "and the order of the sentences; silently fix obvious OCR errors. Answer with a JSON object "
        f'{{"translation": "<the {target.name} text>"}} and nothing else.'
    )
    async with chat(ctx, settings) as llm:
        answer = await llm.ask(system, text, Translation)
    return {"translation": answer.translation.strip(), "model": settings.model}


def lemmas(text: str, language: str, top: int) -> dict[str, Any]:
    """The `top` most frequent lemmas (stopwords aside) with their forms as they appear in the text."""
    stop = LANGUAGES[language].stopwords
    counts: Counter[str] = Counter()
    shown: dict[str, str] = {}  # lower-cased lemma -> the lemma as simplemma gives it
    forms: dict[str, list[str]] = {}
    tokens = WORD.findall(text)
    for token in tokens:
        lemma = simplemma.lemmatize(token, lang=language)
        key = lemma.lower()
        if len(key) < 2 or key in stop:
            continue
        counts[key] += 1
        shown.setdefault(key, lemma)
        if token not in forms.setdefault(key, []):
            forms[key].append(token)
    ranked = sorted(counts, key=lambda k: -counts[k])  # stable: ties keep their first appearance
    return {
        "tokens": len(tokens),
        "lemmas": len(counts),
        "words": [{"lemma": shown[k], "count": counts[k], "forms": forms[k]} for k in ranked[:top]],
    }


async def example_sentences(
    ctx: Context, settings: LlmSettings, words: list[str], source: Language, target: Language
) -> dict[str, Any]:
    """One example sentence per lemma with its translation, or why it was skipped."""
    if not settings.configured:
        return {"skipped": NOT_CONFIGURED}
    if not words:
        return {"sentences": [], "missing": []}
    system = (
        f"You write example sentences for learners of {source.name}. For each word in the user's JSON "
        f"list, write one short, natural {source.name} sentence at CEFR level A2 that uses the word, "
        f"and its {target.name} translation. Answer with a JSON object "
        f'{{"sentences": [{{"lemma": "<the word as given>", "sentence": "<{source.name}>", '
        f'"translation": "<{target.name}>"}}]}}, one entry per word, in the order given.'
    )
    async with chat(ctx, settings) as llm:
        answer = await llm.ask(system, json.dumps({"words": words}, ensure_ascii=False), Examples)
    by_lemma: dict[str, Example] = {}
    for example in answer.sentences:
        by_lemma.setdefault(example.lemma.strip().lower(), example)
    found = [(w, by_lemma[w.lower()]) for w in words if w.lower() in by_lemma]
    if not found:
        raise ProviderError(f"LLM: no example sentence for any of the words asked ({', '.join(words)})")
    return {
        "sentences": [
            {"lemma": w, "sentence": e.sentence.strip(), "translation": e.translation.strip()}
            for w, e in found
        ],
        "missing": [w for w in words if w.lower() not in by_lemma],
        "model": settings.model,
    }


def speak(text: str, voice: str) -> bytes:
    """A WAV file of espeak-ng reading `text` (given on stdin, never as an argument)."""
    with tempfile.TemporaryDirectory(prefix="pgmqw-speak-") as tmp:
        out = Path(tmp) / "speech.wav"
        try:
            done = subprocess.run(  # noqa: S603  (a fixed program; the text goes to stdin)
                [ESPEAK.command, "-v", voice, "-s", "140", "-w", str(out), "--stdin"],
                input=text.encode(),
                capture_output=True,
                timeout=60,
                check=False,
            )
        except FileNotFoundError:
            raise ESPEAK.missing() from None
        if done.returncode != 0 or not out.exists():
            detail = done.stderr.decode(errors="replace").strip()[:300]
            raise RuntimeError(f"espeak-ng failed (exit {done.returncode}): {detail}")
        return out.read_bytes()


async def speak_all(ctx: Context, sentences: list[str], voice: str) -> dict[str, Any]:
    """One WAV artifact per sentence; their URLs, sizes and lengths."""
    clips = []
    for i, sentence in enumerate(sentences, start=1):
        data = await ctx.to_thread(speak, sentence, voice)
        url = await ctx.artifact(f"sentence-{i}.wav", data, "audio/wav")
        clips.append({"text": sentence, "url": url, "bytes": len(data), "seconds": wav_seconds(data)})
    return {"voice": voice, "clips": clips}


def wav_seconds(data: bytes) -> float:
    """The length of a WAV file in seconds (to one decimal)."""
    with wave.open(io.BytesIO(data)) as clip:
        return round(clip.getnframes() / clip.getframerate(), 1)


async def store_lesson(ctx: Context, lesson: dict[str, Any]) -> dict[str, Any]:
    """The lesson as a JSON artifact (one file an app can download)."""
    data = json.dumps(lesson, ensure_ascii=False, indent=2).encode()
    return {"url": await ctx.artifact("lesson.json", data, "application/json"), "bytes": len(data)}
