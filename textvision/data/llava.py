"""LLaVA-1.5 conversation JSON + image folder, as samples of the textvision contract.

The file (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023; e.g.
``llava_v1_5_mix665k.json``) is a JSON list of records::

    {"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                       {"from": "gpt", "value": "The bus is white and red."}, ...]}

It is read with ``datasets`` (``load_dataset("json")``: Arrow, memory-mapped, cached), then scanned
once to build the list of usable ``(record, turn)`` items. Rules:

* **Turns**: ``turns="first"`` (default) makes one sample from the first (human, gpt) exchange;
  ``turns="all"`` makes one sample per exchange, each standing alone (earlier turns are not put in
  the prompt). Ids are the record id, plus ``":k"`` for exchange ``k ≥ 1``.
* **Text**: ``instruction`` and ``prompt`` are the human message with the ``<image>`` tag removed
  (EMMA feeds the text encoder the first human message without ``<image>``); ``answer`` is the gpt
  message. Free-form: ``options == []``, ``label == -1``, ``category == ""``.
* **Image**: read through :func:`textvision.data.images.load_image` (grayscale, palette, RGBA,
  CMYK and 16-bit files become RGB in [0, 1]) and made ``image_size × image_size`` so every batch
  stacks: ``resize="naive"`` (default; Prismatic's ``resize-naive``) stretches, ``resize="pad"``
  first pads to a square with the CLIP mean colour, centred (LLaVA-1.5's
  ``image_aspect_ratio="pad"``), keeping the aspect ratio.
* **Bad records** are skipped and counted, and one warning gives the counts with the first
  offender of each kind: a missing image file; a malformed record (no or empty
  ``conversations``, a turn that is not ``{"from", "value"}`` strings, roles other than
  alternating ``human``/``gpt`` starting with ``human``, an odd number of turns, an ``image``
  that is not a string path). With ``on_error="raise"`` the first one raises ``ValueError``
  naming the record id instead. ``verify_images=True`` also decodes every image once at load
  time (a truncated JPEG passes PIL's ``verify()`` but not a decode) and skips unreadable ones.
  A file that turns out unreadable when it is read (``verify_images=False``) is skipped too: the
  next readable item stands in for it, the file is named once in a warning and counted in
  ``stats.unreadable_image`` (``on_error="raise"``: :class:`~textvision.data.images.ImageLoadError`
  naming the record and the file).
* **The file** must be a JSON list of records, or JSON lines (one record per line); a top-level
  object, a scalar, text that is not UTF-8 and broken JSON fail with a ``ValueError`` that names
  the file and the line.
* **Text-only records** (no ``image`` key, about 6% of mix665k): ``text_only="skip"`` (default,
  counted) or ``"blank"``, which pairs them with a uniform grey image so they still train the LM
  side, as Prismatic mixes text-only and multimodal samples in one batch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from textvision.data.images import ImageLoadError, load_image
from textvision.data.sample import Sample

__all__ = ["LlavaConversations", "LlavaLoadStats", "pad_to_square", "strip_image_tag"]

logger = logging.getLogger(__name__)

IMAGE_TAG = "<image>"
# CLIP's normalisation mean, LLaVA-1.5's padding colour.
PAD_COLOUR = (0.48145466, 0.4578275, 0.40821073)
ROLES = ("human", "gpt")


def pad_to_square(image: torch.Tensor, colour: tuple[float, float, float] = PAD_COLOUR) -> torch.Tensor:
    """``(3, H, W)`` -> ``(3, S, S)`` with ``S = max(H, W)``, the image centred on ``colour``."""
    _, height, width = image.shape
    side = max(height, width)
    if height == width:
        return image
    canvas = torch.tensor(colour, dtype=image.dtype).view(3, 1, 1).expand(3, side, side).clone()
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = image
    return canvas


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(
        image[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True
    )
    return resized[0].clamp_(0.0, 1.0)


def strip_image_tag(text: str) -> str:
    """The message without ``<image>`` tags and surrounding whitespace."""
    return text.replace(IMAGE_TAG, "").strip()


@dataclass
class LlavaLoadStats:
    """What the scan of a conversation file kept and skipped.

    ``examples`` maps each skip reason to the first offending ``(record id, detail)``.
    """

    records: int = 0
    kept_records: int = 0
    samples: int = 0
    missing_image: int = 0
    unreadable_image: int = 0
    malformed: int = 0
    text_only_skipped: int = 0
    text_only_blank: int = 0
    examples: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return self.missing_image + self.unreadable_image + self.malformed + self.text_only_skipped

    def note(self, reason: str, record_id: str, detail: str) -> None:
        setattr(self, reason, getattr(self, reason) + 1)
        self.examples.setdefault(reason, (record_id, detail))


def _lenient_json(value):
    """Decode a value ``datasets`` stored as JSON text (mixed-type columns); leave others alone.

    ``datasets`` stores a column whose records disagree on type (an ``id`` that is a string in one
    record and a number in another) as JSON text, but keeps bare strings unquoted; decoding those
    with a lenient parser turns ``"000001"`` into ``1``. Python's strict parser refuses them, so
    they stay strings.
    """
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _check_top_level(path: Path) -> None:
    """Refuse anything but a JSON list of records or JSON lines, naming the file."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
        first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
        if not first:
            raise ValueError(f"{path}:1: the file is empty; expected a list of records")
        if first == b"[":
            return
        if first == b"{":
            handle.seek(0)
            line = handle.readline().decode("utf-8", errors="replace").lstrip("\ufeff")
            try:
                json.loads(line)
                return  # one complete record on the first line: JSON lines
            except ValueError:
                pass
            raise ValueError(
                f"{path}:1: the top level is a JSON object spanning lines; expected a list of records "
                "([{...}, ...]) or JSON lines (one record per line)"
            )
    raise ValueError(f"{path}:1: expected a list of records (or JSON lines), got {head[:40]!r}")


def _json_problem(path: Path) -> str | None:
    """Where a conversation file is not valid UTF-8 JSON: ``"file:line:column: what"``, or ``None``."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        return f"{path}:{line}:{column}: not UTF-8 text (byte {raw[error.start]:#04x}: {error.reason})"
    text = text.lstrip("\ufeff")
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        return None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            return f"{path}:{number}:{error.colno}: invalid JSON line: {error.msg}"
        if not isinstance(record, dict):
            return f"{path}:{number}: a JSON line must be one record (an object), got {type(record).__name__}"
    return None


def _conversation_problem(conversations) -> str | None:
    """Why a ``conversations`` value is malformed, or ``None``."""
    if not isinstance(conversations, list) or len(conversations) == 0:
        return f"conversations must be a non-empty list, got {conversations!r:.80}"
    if len(conversations) % 2:
        return f"odd number of turns ({len(conversations)}): every human turn needs a gpt reply"
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return f"turn {k} is not a {{'from', 'value'}} pair of strings: {turn!r:.80}"
        if turn.get("from") != ROLES[k % 2]:
            return f"turn {k} is from {turn.get('from')!r}, expected {ROLES[k % 2]!r}"
    return None


class LlavaConversations(Dataset):
    """Samples from a LLaVA-1.5 conversation JSON and its image folder (see module docstring).

    Args:
        json_path: the conversation file (a JSON list; JSON lines work too).
        image_folder: root that the records' ``image`` paths are relative to.
        image_size: output side in pixels (images are resized to ``image_size × image_size``).
        resize: ``"naive"`` (stretch) or ``"pad"`` (pad to square with the CLIP mean, then resize).
        turns: ``"first"`` or ``"all"``.
        text_only: ``"skip"`` or ``"blank"`` for records without an image.
        on_error: ``"skip"`` (count and warn once) or ``"raise"`` for bad records.
        verify_images: open every image at load time and skip unreadable ones.
        cache_dir: ``datasets`` cache folder (default: its own).
    """

    def __init__(
        self,
        json_path: str | Path,
        image_folder: str | Path,
        *,
        image_size: int = 336,
        resize: str = "naive",
        turns: str = "first",
        text_only: str = "skip",
        on_error: str = "skip",
        verify_images: bool = False,
        cache_dir: str | None = None,
    ):
        from datasets import load_dataset

        if turns not in ("first", "all"):
            raise ValueError(f"turns must be 'first' or 'all', got {turns!r}")
        if text_only not in ("skip", "blank"):
            raise ValueError(f"text_only must be 'skip' or 'blank', got {text_only!r}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if resize not in ("naive", "pad"):
            raise ValueError(f"resize must be 'naive' or 'pad', got {resize!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.json_path = Path(json_path)
        self.image_folder = Path(image_folder)
        if not self.json_path.is_file():
            raise FileNotFoundError(f"LLaVA conversation file not found: {self.json_path}")
        if not self.image_folder.is_dir():
            raise FileNotFoundError(f"LLaVA image folder not found: {self.image_folder}")
        self.image_size = image_size
        self.resize = resize
        self.turns = turns
        self.text_only = text_only
        self.on_error = on_error
        _check_top_level(self.json_path)
        try:
            records = load_dataset("json", data_files=str(self.json_path), split="train", cache_dir=cache_dir)
        except Exception as error:  # datasets wraps the parser's error without the file or line
            problem = _json_problem(self.json_path)
            if problem is None:
                raise
            raise ValueError(problem) from error
        self._records = records  # pickles by cache-file reference, not by content
        self._json_columns = {
            name for name, feature in records.features.items() if type(feature).__name__ == "Json"
        }
        # (row, exchange, sample id, image path or None)
        self.items: list[tuple[int, int, str, str | None]] = []
        self._unreadable: set[int] = set()  # items whose image failed to load (skipped from then on)
        self.stats = LlavaLoadStats()
        self._scan(verify_images)

    # -- loading ----------------------------------------------------------------------------
    @property
    def _table(self) -> pa.Table:
        data = self._records.data
        return data.table if hasattr(data, "table") else data

    def _row(self, row: int) -> dict:
        record = self._table.slice(row, 1).to_pylist()[0]
        return {k: (_lenient_json(v) if k in self._json_columns else v) for k, v in record.items()}

    def _bad(self, reason: str, record_id: str, detail: str) -> None:
        if self.on_error == "raise":
            raise ValueError(f"{self.json_path}: record {record_id!r}: {detail}")
        self.stats.note(reason, record_id, detail)

    def _scan(self, verify_images: bool) -> None:
        stats = self.stats
        names = self._table.column_names
        row = 0
        for batch in self._table.to_batches(max_chunksize=8192):
            columns = {
                name: [
                    _lenient_json(v) if name in self._json_columns else v
                    for v in batch.column(name).to_pylist()
                ]
                for name in ("id", "image", "conversations")
                if name in names
            }
            for j in range(batch.num_rows):
                stats.records += 1
                self._scan_record(row, {k: v[j] for k, v in columns.items()}, verify_images)
                row += 1
        if stats.skipped:
            details = "; ".join(
                f"{getattr(stats, reason)} {reason.replace('_', ' ')} (first: record {rid!r}: {detail})"
                for reason, (rid, detail) in stats.examples.items()
            )
            logger.warning(
                "%s: kept %d of %d records (%d samples); skipped %s",
                self.json_path,
                stats.kept_records,
                stats.records,
                stats.samples,
                details,
            )
        if not self.items:
            raise ValueError(
                f"{self.json_path}: no usable records ({stats.records} read, {stats.skipped} skipped)"
            )

    def _scan_record(self, row: int, record: dict, verify_images: bool) -> None:
        record_id = str(record.get("id")) if record.get("id") is not None else f"row{row}"
        problem = _conversation_problem(record.get("conversations"))
        image = record.get("image")
        if problem is None and image is not None and not (isinstance(image, str) and image):
            problem = f"image must be a relative path string, got {image!r:.80}"
        if problem is not None:
            self._bad("malformed", record_id, problem)
            return
        path: str | None = None
        if image is None:
            if self.text_only == "skip":
                self.stats.note("text_only_skipped", record_id, "no image")
                return
            self.stats.text_only_blank += 1
        else:
            full = self.image_folder / image
            if not full.is_file():
                self._bad("missing_image", record_id, f"image not found: {full}")
                return
            if verify_images:
                try:
                    with Image.open(full) as handle:
                        handle.load()  # a full decode: verify() misses truncated files
                except Exception as error:  # PIL raises many types for broken files
                    self._bad("unreadable_image", record_id, f"cannot read {full}: {error}")
                    return
            path = str(full)
        exchanges = len(record["conversations"]) // 2 if self.turns == "all" else 1
        for k in range(exchanges):
            self.items.append((row, k, record_id if k == 0 else f"{record_id}:{k}", path))
        self.stats.kept_records += 1
        self.stats.samples += exchanges

    # -- access -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``; if its image cannot be read, the next readable one (see the module doc)."""
        count = len(self.items)
        index = int(index)
        if not -count <= index < count:
            raise IndexError(f"index {index} out of range for {count} samples")
        for step in range(count):
            current = (index + step) % count
            if current in self._unreadable:
                continue
            try:
                return self._sample(current)
            except ImageLoadError as error:
                if self.on_error == "raise":
                    raise
                self._unreadable.add(current)
                self.stats.note("unreadable_image", self.items[current][2], str(error))
                logger.warning(
                    "%s: skipping an unreadable image (%d so far in this process): %s",
                    self.json_path,
                    len(self._unreadable),
                    error,
                )
        raise ImageLoadError(f"{self.json_path}: no sample has a readable image")

    def _sample(self, index: int) -> Sample:
        row, k, sample_id, path = self.items[index]
        conversations = self._row(row)["conversations"]
        question = strip_image_tag(conversations[2 * k]["value"])
        answer = conversations[2 * k + 1]["value"].strip()
        if path is None:
            image = torch.full((3, self.image_size, self.image_size), 0.5)
        else:
            try:
                if self.resize == "pad":
                    image = _resize(pad_to_square(load_image(path)), self.image_size)
                else:
                    image = load_image(path, self.image_size)
            except ImageLoadError as error:
                raise ImageLoadError(f"record {sample_id!r}: {error}") from error
        return Sample(
            image=image,
            instruction=question,
            prompt=question,
            answer=answer,
            options=[],
            label=-1,
            id=sample_id,
            pair_id=-1,
            category="",
        )

    def __repr__(self) -> str:
        return (
            f"LlavaConversations({str(self.json_path)!r}, samples={len(self)}, "
            f"skipped={self.stats.skipped} of {self.stats.records} records)"
        )
