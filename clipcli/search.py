"""Asking image embeddings more than "which label": search by text or example image, and near-duplicates.

    from clipcli.search import search_store, text_query, duplicate_groups
    hits = search_store(open_store("photos.store"), query, k=10)  # [Hit(path, score) | Moment], best first

A query is the L2-normalised mean of its parts: the text's embedding (the text through prompt templates,
normalised, averaged and renormalised, exactly as a label's class embedding, so it shares the label cache)
and the embeddings of example images.  Images are ranked by cosine similarity to it.  Search streams the
embeddings chunk by chunk and keeps only the best k, so memory does not grow with the store.  A video's frames
(keys `video#t=s`) are kept whole, by time and score, and merged into moments (clipcli.moments), which are
ranked with the photos: k counts photos and moments.

Near-duplicates: two images are copies when their embeddings' cosine similarity is at least a threshold
(same content) and, where both files can be read, their layouts agree: the correlation of 8x8
blurred colour thumbnails is at least LAYOUT_THRESHOLD (same framing).  Embeddings alone cannot tell a
resized copy from another photo of the same subject with a weak model; the layout alone cannot tell a photo
from a different one of the same tones; together they do (bench/bench_search.py).  Copies are joined into
groups (connected components), each listing its best copy first (most pixels, then the largest file, then the
path) with every member's similarity to it.  Videos are compared as whole videos, with videos only (see
find_all_dupes).  Nothing here deletes anything.

numpy and scipy only; a model is loaded by the caller, and only when a query needs encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .options import DUPE_THRESHOLD  # the embedding cosine (kept where the help can read it without numpy)
from .frames import fold_errors
from .paths import is_video_name, split_frame
from .vectors import as_array, l2_normalize

# Dupes, measured with bench/bench_search.py (bench/RESULTS.md): resized, recompressed and lightly cropped copies
# pass both; distinct images (also of the same subject) fail at least one.
LAYOUT_THRESHOLD = 0.90  # correlation of 8x8 blurred colour thumbnails
LAYOUT_SIZE = 8
SCORE_ROWS = 1024  # rows cast to float32 at a time: small enough to stay in cache
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Hit:
    path: str
    score: float  # cosine similarity to the query

    def record(self) -> dict:
        """Its JSON shape: {"path", "score"} (a moment's: moments.Moment.record)."""
        return {"path": self.path, "score": round(self.score, 6)}


def combine_query(parts: Sequence[np.ndarray]) -> np.ndarray:
    """The query vector: the normalised mean of the normalised parts (texts and example images)."""
    if not parts:
        raise ValueError("a query needs a text or an example image")
    stacked = l2_normalize(np.stack([as_array(np.asarray(p, dtype=np.float32)).reshape(-1) for p in parts]))
    return l2_normalize(stacked.mean(axis=0)).astype(np.float32)


def cosines(vectors: np.ndarray, query: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of each row to the (unit) query, rows of any float dtype (float16 store rows are cast
    a few at a time and renormalised); rows marked invalid, and all-zero rows, score -inf."""
    out = np.empty(len(vectors), dtype=np.float32)
    if vectors.dtype == np.float32:
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        np.divide(vectors @ query, norms, out=out, where=norms > 0)
        out[norms <= 0] = -np.inf
    else:
        buffer = np.empty((min(SCORE_ROWS, len(vectors)), vectors.shape[1]), dtype=np.float32)
        for start in range(0, len(vectors), SCORE_ROWS):
            part = buffer[:min(SCORE_ROWS, len(vectors) - start)]
            np.copyto(part, vectors[start:start + len(part)])
            norms = np.sqrt(np.einsum("ij,ij->i", part, part))
            dots = part @ query
            out[start:start + len(part)] = np.divide(dots, norms, out=np.full_like(dots, -np.inf), where=norms > 0)
    if valid is not None:
        out[~valid] = -np.inf
    return out


class TopK:
    """The best k (or, with k = 0, all) hits at or above min_score, fed chunk by chunk.  Memory: k hits plus one
    chunk's scores; the paths of a chunk are asked for only for its candidates."""

    def __init__(self, k: int = 10, min_score: float | None = None) -> None:
        self.k, self.min_score = k, min_score
        self._scores = np.empty(0, dtype=np.float32)
        self._paths: list[str] = []

    def add(self, scores: np.ndarray, paths: Sequence[str] | Callable[[np.ndarray], list[str]]) -> None:
        keep = np.flatnonzero(np.isfinite(scores) if self.min_score is None else scores >= self.min_score)
        if self.k and len(keep) > self.k:
            keep = keep[np.argpartition(-scores[keep], self.k - 1)[:self.k]]
        if not len(keep):
            return
        named = paths(keep) if callable(paths) else [paths[i] for i in keep]
        self._scores = np.concatenate([self._scores, scores[keep]])
        self._paths += named
        if self.k and len(self._scores) > 2 * self.k:
            self._trim()

    def _order(self) -> np.ndarray:
        return np.lexsort((np.array(self._paths, dtype=object), -self._scores))  # best first, then by path

    def _trim(self) -> None:
        order = self._order()[:self.k]
        self._scores, self._paths = self._scores[order], [self._paths[i] for i in order]

    def hits(self) -> list[Hit]:
        if not self._paths:
            return []
        order = self._order()
        if self.k:
            order = order[:self.k]
        return [Hit(self._paths[i], float(self._scores[i])) for i in order]


class Ranked:
    """What a search keeps, fed chunk by chunk: the best k photos (a TopK), and every scored frame of a video
    (its time and score: 12 bytes a frame), which become moments (clipcli.moments) at the end.  results():
    photos and moments together, best first, the best k (0: all)."""

    def __init__(self, k: int = 10, min_score: float | None = None) -> None:
        self.k, self.min_score = k, min_score
        self.photos = TopK(k, min_score)
        self.frames: dict[str, tuple[list[float], list[float]]] = {}  # video -> (times, scores)

    def add(self, scores: np.ndarray, paths: Sequence[str] | Callable[[np.ndarray], list[str]]) -> None:
        from .paths import split_frame

        rows = np.flatnonzero(np.isfinite(scores))
        if not len(rows):
            return
        named = paths(rows) if callable(paths) else [paths[i] for i in rows]  # every row: a frame is known by its key
        framed = [i for i, path in enumerate(named) if "#t=" in path]  # a quick look first: most rows are photos
        frame_at = {}
        for i in framed:
            video, at = split_frame(named[i])
            if at is not None:
                frame_at[i] = (video, at)
        if not frame_at:
            self.photos.add(scores[rows], named)
            return
        for i, (video, at) in frame_at.items():
            times, values = self.frames.setdefault(video, ([], []))
            times.append(at)
            values.append(float(scores[rows[i]]))
        photos = [i for i in range(len(named)) if i not in frame_at]
        if photos:
            self.photos.add(scores[rows[photos]], [named[i] for i in photos])

    def merge(self, other: "Ranked") -> None:
        hits = other.photos.hits()
        self.photos.add(np.array([h.score for h in hits], dtype=np.float32), [h.path for h in hits])
        for video, (times, values) in other.frames.items():
            mine = self.frames.setdefault(video, ([], []))
            mine[0].extend(times)
            mine[1].extend(values)

    def results(self) -> list:
        """[Hit | Moment], best first (then by path and start): the best k of photos and moments, the moments'
        ends clipped to their local videos' durations."""
        from .moments import clip_ends, merge_moments

        found = self.photos.hits() + merge_moments(self.frames, min_score=self.min_score)
        found.sort(key=lambda r: (-r.score, r.path, getattr(r, "start", -1.0)))
        if self.k:
            found = found[:self.k]
        clipped = iter(clip_ends([r for r in found if not isinstance(r, Hit)]))
        return [r if isinstance(r, Hit) else next(clipped) for r in found]


def search(chunks: Iterable[tuple[Sequence[str], np.ndarray]], query: np.ndarray, k: int = 10,
           min_score: float | None = None) -> list:
    """Rank (paths, vectors) chunks by cosine similarity to the query: the best k (0: all) results, best first,
    photos as Hits and videos' frames merged into Moments (clipcli.moments)."""
    best = Ranked(k, min_score)
    for paths, vectors in chunks:
        if vectors is not None and len(vectors):
            best.add(cosines(vectors, query), paths)
    return best.results()


def search_store(store, query: np.ndarray, k: int = 10, min_score: float | None = None,
                 progress: Progress | None = None, rows: int = 16384, counts: dict | None = None) -> list:
    """Every stored image ranked against the query, streamed batch by batch, one shard per core at a time
    (memory does not grow with the photos, and by 12 bytes a video frame); rows of unreadable images are left
    out.  The best k results, best first: photos as Hits, videos' frames merged into Moments.  counts: a dict
    that gets "searched" (readable stored photos and videos) and "unreadable" (rows of images that could not
    be read)."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    if len(query) != store.dim:
        from .errors import StoreError

        raise StoreError(f"store {store.directory}: its embeddings have {store.dim} dimensions, the query "
                         f"{len(query)}; use the store's model")
    lock, done, readable = threading.Lock(), [0], [0]
    total = store.rows if progress is not None else 0

    def one_shard(name: str) -> Ranked:
        best = Ranked(k, min_score)
        for paths_of, vectors in store.iter_vectors(rows, shards=[name]):
            scores = np.einsum("ij,j->i", vectors, query)  # unit rows: the cosine (NaN: unreadable);
            # einsum, not BLAS: the shards are the parallelism, and BLAS threads would contend with them
            best.add(scores, paths_of)
            finite = int(np.count_nonzero(np.isfinite(scores)))
            with lock:
                readable[0] += finite
                done[0] += len(vectors)
                if progress is not None:
                    progress(done[0], total)
        return best

    merged = Ranked(k, min_score)
    with ThreadPoolExecutor(max(1, min(os.cpu_count() or 1, 4))) as pool:  # numpy and arrow release the GIL
        for part in pool.map(one_shard, store.shard_names()):
            merged.merge(part)
    if counts is not None:
        frames = sum(len(times) for times, _ in merged.frames.values())
        counts.update(searched=readable[0] - frames + len(merged.frames), unreadable=done[0] - readable[0])
    return merged.results()


# --- queries ------------------------------------------------------------------------------------------------
def text_embedding(text: str, templates, loaded=None, scoring: dict | None = None, cache_root=None,
                   use_cache: bool = True) -> np.ndarray | None:
    """The text's embedding through the templates (as a label's class embedding): from the label cache when
    `scoring` (a store's) finds it there, else encoded by `loaded`; None when neither can."""
    from .classifier import cached_classifier, zero_shot_classifier
    from .labels import Label

    labels = [Label.plain(text)]
    if scoring is not None and use_cache and cache_root is not None:
        cached = cached_classifier(scoring, labels, templates, cache_root)
        if cached is not None:
            return cached.label_embeddings[0]
    if loaded is None:
        return None
    return zero_shot_classifier(loaded, labels, templates, cache_root, use_cache).label_embeddings[0]


def image_embeddings(paths: Sequence[str], store=None,
                     encoder=None) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(path, embedding or None, error message) per example image: read from the store when it holds the file
    as it is now, else encoded by the encoder (not written to the store); None for the encoder means the
    stored ones only (the rest come back as None with no message)."""
    from .images import local_path
    from .paths import display_path
    from .store import file_state, resolve

    paths = [local_path(path) for path in paths]
    found = {}
    if store is not None and paths:
        keys = [display_path(resolve(path)) for path in paths]
        located = store.locate(keys)
        usable = {}
        for path, key in zip(paths, keys):
            where, now = located.get(key), file_state(path)
            if where is not None and (now is None or where.state == now):  # as stored, or only in the store
                usable[key] = where
        rows = store.read(usable) if usable else {}
        found = {path: rows[key].embedding for path, key in zip(paths, keys)
                 if key in rows and rows[key].embedding is not None}
    missing = [path for path in paths if path not in found]
    encoded = {}
    if missing and encoder is not None:
        for items, features in encoder.batches(missing):
            rows = iter(() if features is None else features)
            for item in items:
                encoded[item.path] = (None, item.error[1]) if item.error else (next(rows), None)
    for path in paths:
        if path in found:
            yield path, found[path], None
        else:
            yield path, *encoded.get(path, (None, None))


# --- near-duplicates ----------------------------------------------------------------------------------------
def linked_pairs(vectors: np.ndarray, threshold: float, block: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, similarities) of every pair i < j with cosine >= threshold, compared block by block
    (16 MB of similarities at a time)."""
    vectors = l2_normalize(as_array(vectors))
    rows, cols, sims = [], [], []
    for start in range(0, len(vectors), block):
        for other in range(start, len(vectors), block):
            part = vectors[start:start + block] @ vectors[other:other + block].T
            i, j = np.nonzero(part >= threshold)
            upper = j + other > i + start
            rows.append(i[upper] + start)
            cols.append(j[upper] + other)
            sims.append(part[i[upper], j[upper]])
    empty = np.empty(0, dtype=np.int64)
    return (np.concatenate(rows) if rows else empty, np.concatenate(cols) if cols else empty,
            np.concatenate(sims).astype(np.float32) if sims else np.empty(0, np.float32))


def duplicate_groups(vectors: np.ndarray, threshold: float = DUPE_THRESHOLD, rank: Sequence | None = None,
                     confirm: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                     ) -> list[list[tuple[int, float]]]:
    """Groups of near-duplicates (two or more rows each): [(row, similarity to the group's first row)], the
    first row the best copy by `rank` (a sort key per row, smaller first; default: the row number).  Pairs
    above the threshold are kept where `confirm(rows, cols)` (a boolean mask) says so.  Groups come largest
    first, then by their first row."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    vectors = l2_normalize(as_array(vectors))
    n = len(vectors)
    rows, cols, _ = linked_pairs(vectors, threshold)
    if confirm is not None and len(rows):
        kept = confirm(rows, cols)
        rows, cols = rows[kept], cols[kept]
    if not len(rows):
        return []
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    members: dict[int, list[int]] = {}
    for row in np.unique(np.concatenate([rows, cols])):
        members.setdefault(int(component[row]), []).append(int(row))
    key = (lambda row: (rank[row], row)) if rank is not None else (lambda row: row)
    groups = []
    for group in members.values():
        group.sort(key=key)
        similarity = vectors[group] @ vectors[group[0]]
        groups.append([(row, float(s)) for row, s in zip(group, similarity)])
    groups.sort(key=lambda g: (-len(g), key(g[0][0])))
    return groups


@dataclass(frozen=True)
class Copy:
    """One image of a near-duplicate group."""

    path: str
    similarity: float  # cosine similarity to the group's first (best) copy; 1.0 for that one
    width: int | None = None
    height: int | None = None
    bytes: int | None = None


def layout_signature(path: str) -> np.ndarray | None:
    """The image's layout: an 8x8 blurred colour thumbnail, zero mean and unit norm (None when the file
    cannot be read, or is flat)."""
    from PIL import Image, ImageFilter

    from .errors import ImageReadError
    from .images import open_image

    try:
        image = open_image(path, max_megapixels=200, min_size=4 * LAYOUT_SIZE)
    except ImageReadError:
        return None
    small = image.resize((4 * LAYOUT_SIZE,) * 2, Image.BOX).filter(ImageFilter.GaussianBlur(2))
    values = np.asarray(small.resize((LAYOUT_SIZE,) * 2, Image.BOX), dtype=np.float32).ravel()
    values -= values.mean()
    norm = float(np.linalg.norm(values))
    return values / norm if norm > 1e-3 else None


def layouts_agree(paths: Sequence[str], threshold: float = LAYOUT_THRESHOLD):
    """confirm(rows, cols) for duplicate_groups: a pair's layouts agree, or cannot both be read (then the
    embeddings decide alone).  Each file is read once, and only if it is in some pair."""
    signatures: dict[int, np.ndarray | None] = {}

    def signature(row: int):
        if row not in signatures:
            signatures[row] = layout_signature(paths[row])
        return signatures[row]

    def confirm(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        kept = np.ones(len(rows), dtype=bool)
        for i, (a, b) in enumerate(zip(rows.tolist(), cols.tolist())):
            first, second = signature(a), signature(b)
            if first is not None and second is not None:
                kept[i] = float(first @ second) >= threshold
        return kept

    return confirm


def find_dupes(paths: Sequence[str], vectors: np.ndarray, sizes: Sequence[tuple[int, int] | None],
               file_bytes: Sequence[int | None], threshold: float = DUPE_THRESHOLD,
               layout_threshold: float | None = LAYOUT_THRESHOLD) -> list[list[Copy]]:
    """Near-duplicate groups of these images, best copy first (most pixels, then largest file, then path);
    layout_threshold None: the embeddings alone decide."""
    def rank(row: int) -> tuple:
        size, length = sizes[row], file_bytes[row]
        return (-(size[0] * size[1]) if size else 0, -(length or 0), paths[row])

    ranks = [rank(row) for row in range(len(paths))]
    return [[Copy(paths[row], round(similarity, 6), *(sizes[row] or (None, None)), file_bytes[row])
             for row, similarity in group]
            for group in duplicate_groups(vectors, threshold, ranks,
                                          None if layout_threshold is None else layouts_agree(paths, layout_threshold))]


def dupes_in_store(store, threshold: float = DUPE_THRESHOLD, counts: dict | None = None) -> list[list[Copy]]:
    """Near-duplicate groups among every readable stored image and video, embeddings read from the scan copies
    where they are current (held in memory as float32: dim x 4 bytes per image or video frame, e.g. 100 MB for
    50,000 of a 512-d model).  counts: a dict that gets "searched" (readable stored photos and videos), "videos"
    and "unreadable"."""
    paths, chunks, sizes, lengths = [], [], [], []
    rows = 0
    for table, vectors in store.iter_shard_tables(["path", "width", "height", "size"]):  # scan copies if current
        keep = np.flatnonzero(~np.isnan(vectors[:, 0]))  # unit rows; NaN for an unreadable image
        rows += len(vectors)
        chunks.append(np.asarray(vectors[keep], dtype=np.float32))
        columns = [table.column(name).to_pylist() for name in ("path", "width", "height", "size")]
        for row in keep.tolist():
            paths.append(columns[0][row])
            width, height = columns[1][row], columns[2][row]
            sizes.append((width, height) if width and height else None)
            lengths.append(columns[3][row])
    found = find_all_dupes(paths, np.concatenate(chunks) if chunks else np.empty((0, store.dim), np.float32), sizes,
                           lengths, threshold)
    if counts is not None:
        counts.update(searched=found.photos + found.videos, videos=found.videos, unreadable=rows - len(paths))
    return found.groups


# --- videos among the dupes ---------------------------------------------------------------------------------
# A video is compared as a whole, never frame by frame: its frames are not each other's copies, and two videos that
# share a frame (a black first frame, a studio logo) are not copies for that.  Two videos are copies when
#   1. their mean embeddings (each the L2-normalised mean of all its sampled frames) have a cosine of at least the
#      threshold: the same content overall, whatever the order (cheap: it picks the pairs to look at); and
#   2. their frame sequences agree: of both videos' sampled frames, each compared with the other video's frame at
#      the same time (the nearest sampled time within half the coarser sampling interval; a frame with none there
#      disagrees), at least AGREE_SHARE are at least the threshold alike: they agree nearly all along.
# The first alone would call a video and its scenes reordered copies, and a shared intro or logo pulls the means
# together; a median of the aligned frames would let a trimmed copy (or a shared first half) through, and dupes'
# best copy could then be the shorter one, whose "extra copy" holds what it lacks.  A re-encode (another codec,
# bitrate, frame rate or size) agrees frame for frame; the share leaves room for a frame or two at a scene change
# that lands between the two encodings' frames.  Videos are compared with videos only, never with a photo.
AGREE_SHARE = 0.9


@dataclass
class AllDupes:
    groups: list[list[Copy]]
    photos: int = 0  # readable photos compared
    videos: int = 0  # videos compared


def aligned_similarities(times_a: np.ndarray, frames_a: np.ndarray, times_b: np.ndarray,
                         frames_b: np.ndarray) -> np.ndarray:
    """Over both videos' sampled frames (a's, then b's): each one's similarity to the other video's frame at the
    same time (unit rows; times sorted), -1 for a frame the other video has none near."""
    from .moments import HALF_DEFAULT, sampling_interval

    intervals = [i for i in (sampling_interval(times_a), sampling_interval(times_b)) if i is not None]
    tolerance = (max(intervals) / 2 if intervals else HALF_DEFAULT) + 1e-3
    similarities = []
    for times, frames, other_times, other_frames in ((times_a, frames_a, times_b, frames_b),
                                                     (times_b, frames_b, times_a, frames_a)):
        after = np.clip(np.searchsorted(other_times, times), 0, len(other_times) - 1)
        before = np.clip(after - 1, 0, len(other_times) - 1)
        nearest = np.where(np.abs(other_times[before] - times) <= np.abs(other_times[after] - times), before, after)
        similarity = np.einsum("ij,ij->i", frames, other_frames[nearest])
        similarity[np.abs(other_times[nearest] - times) > tolerance] = -1.0
        similarities.append(similarity)
    return np.concatenate(similarities)


def sequences_agree(times_a: np.ndarray, frames_a: np.ndarray, times_b: np.ndarray, frames_b: np.ndarray,
                    threshold: float = DUPE_THRESHOLD) -> bool:
    """Whether at least AGREE_SHARE of both videos' frames match the other's frame at their time (see above)."""
    similar = aligned_similarities(times_a, frames_a, times_b, frames_b) >= threshold
    return bool(np.count_nonzero(similar) >= AGREE_SHARE * len(similar) - 1e-9)


def find_all_dupes(paths: Sequence[str], vectors: np.ndarray, sizes: Sequence[tuple[int, int] | None],
                   file_bytes: Sequence[int | None], threshold: float = DUPE_THRESHOLD,
                   layout_threshold: float | None = LAYOUT_THRESHOLD) -> AllDupes:
    """Near-duplicate groups of photos (find_dupes) and of videos (rows keyed `video#t=s`, compared as whole
    videos, see above): the photos' groups first, then the videos', each kind largest first."""
    from .paths import split_frame

    vectors = as_array(vectors)
    photo_rows, videos = [], {}
    for row, path in enumerate(paths):
        video, at = split_frame(path)
        if at is None:
            photo_rows.append(row)
        else:
            videos.setdefault(video, []).append((at, row))
    groups = find_dupes([paths[r] for r in photo_rows], vectors[photo_rows] if photo_rows else vectors[:0],
                        [sizes[r] for r in photo_rows], [file_bytes[r] for r in photo_rows], threshold,
                        layout_threshold) if photo_rows else []
    groups += video_dupes(videos, vectors, sizes, file_bytes, threshold)
    return AllDupes(groups, len(photo_rows), len(videos))


def video_dupes(videos: dict[str, list[tuple[float, int]]], vectors: np.ndarray,
                sizes: Sequence[tuple[int, int] | None], file_bytes: Sequence[int | None],
                threshold: float = DUPE_THRESHOLD) -> list[list[Copy]]:
    """Groups of videos that are copies (video -> [(time, row of `vectors`)]), best copy first (most pixels,
    then the largest file, then the path)."""
    if len(videos) < 2:
        return []
    names = sorted(videos)
    timelines = []
    for name in names:
        frames = sorted(videos[name])
        rows = [row for _, row in frames]
        timelines.append((np.array([t for t, _ in frames]), l2_normalize(vectors[rows].astype(np.float32))))
    means = l2_normalize(np.stack([frames.mean(axis=0) for _, frames in timelines]))

    def confirm(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.array([sequences_agree(*timelines[a], *timelines[b], threshold)
                         for a, b in zip(rows.tolist(), cols.tolist())], dtype=bool)

    def rank(index: int) -> tuple:
        row = videos[names[index]][0][1]
        size, length = sizes[row], file_bytes[row]
        return (-(size[0] * size[1]) if size else 0, -(length or 0), names[index])

    ranks = [rank(i) for i in range(len(names))]
    out = []
    for group in duplicate_groups(means, threshold, ranks, confirm):
        copies = []
        for index, similarity in group:
            row = videos[names[index]][0][1]
            copies.append(Copy(names[index], round(similarity, 6), *(sizes[row] or (None, None)), file_bytes[row]))
        out.append(copies)
    return out


# --- the jobs: `clip search` and `clip dupes` ---------------------------------------------------------------
@dataclass
class Found:
    """What a search or dupes run found, and with what."""

    model: dict  # name, pretrained, backend, precision (backend None: answered from the store, no model loaded)
    hits: list[Hit] | None = None
    groups: list[list[Copy]] | None = None
    errors: list[tuple[str, str]] | None = None  # (path, message) of inputs that could not be read
    searched: int = 0  # photos and videos searched
    videos: int = 0  # of which videos (dupes)


def search_job(text: str | None = None, like: Sequence[str] = (), templates="simple", store=None,
               inputs: Sequence[str] = (), model=None, decode=None, engine=None, k: int = 10,
               min_score: float | None = None, progress: Progress | None = None) -> Found:
    """Rank the store's images (or the inputs', written through the store when one is given) by similarity
    to the text and/or example images.  With a store alone, nothing is loaded when the text is in the label
    cache and the examples are stored; else the model (the store's by default) is loaded once."""
    from .errors import InputError
    from .options import DecodeOptions, EngineOptions, ModelOptions
    from .templates import load_template_set

    model, decode, engine = model or ModelOptions(), decode or DecodeOptions(), engine or EngineOptions()
    if text is not None and not text.strip():
        if like:
            raise InputError("the text query is blank (only spaces); leave it out to search by --like alone")
        raise InputError("the text query is blank (only spaces); give words to search for, or --like IMAGE")
    if not text and not like:
        raise InputError("nothing to search for: give a text query, --like IMAGE, or both")
    for path in like:
        if is_video_name(path) and split_frame(path)[1] is None:
            raise InputError(f"--like {path}: a video, not one picture; give one of its frames as "
                             f"'{path}#t=SECONDS', or an image")
    if min_score is not None and not math.isfinite(min_score):
        from .errors import UsageError

        raise UsageError(f"--min-score {min_score}: use a cosine from -1 to 1")
    template_set = load_template_set(templates) if isinstance(templates, str) else templates
    if store is not None and not inputs:
        return _search_store(text, like, template_set, store, model, decode, engine, k, min_score, progress)
    from .embeddings import Encoder, open_encoder

    with open_encoder(model, decode, engine, store) as encoder:
        query = _query(text, like, template_set, encoder.model, encoder.store, Encoder(encoder.model, decode, engine),
                       model)
        errors: list[tuple[str, str]] = []
        searched: set[str] = set()  # photos and videos (a video once, however many of its frames)

        def chunks():
            from .paths import display_path

            for items, features in encoder.batches(list(inputs), progress):
                errors.extend((display_path(item.path), item.error[1]) for item in items if item.error)
                scored = [display_path(item.path) for item in items if not item.error]
                searched.update(split_frame(path)[0] for path in scored)
                yield scored, features

        hits = search(chunks(), query, k, min_score)
        return Found(encoder.describe(), hits=hits, errors=fold_errors(errors), searched=len(searched))


def _search_store(text, like, template_set, store, model, decode, engine, k, min_score, progress) -> Found:
    from . import config
    from .store import open_store

    reader = open_store(store)
    cache_root = config.cache_dir(model.cache_dir)
    named = model.name is not None or model.pretrained is not None
    parts = []
    if not named:
        vector = text_embedding(text, template_set, scoring=reader.model.scoring, cache_root=cache_root,
                                use_cache=model.use_cache) if text else None
        stored = list(image_embeddings(list(like), reader))
        if (vector is not None or not text) and all(v is not None for _, v, _ in stored):
            parts = ([vector] if text else []) + [v for _, v, _ in stored]
    described = reader.describe()
    if not parts:  # the model is needed: the store's, or the one named (which must be the store's)
        from .embeddings import Encoder, load_model_for, store_model
        from .store import check_model

        loaded = load_model_for(model, store)
        check_model(reader.directory, reader.manifest, store_model(loaded))
        query = _query(text, like, template_set, loaded, reader, Encoder(loaded, decode, engine), model)
        described = loaded.describe()
    else:
        query = combine_query(parts)
    counts: dict = {}
    hits = search_store(reader, query, k, min_score, progress, counts=counts)
    return Found(described, hits=hits, errors=[], searched=counts["searched"])


def _query(text, like, template_set, loaded, reader, encoder, model) -> np.ndarray:
    """The query vector with the model at hand (stored example images are read, not encoded)."""
    from . import config
    from .errors import InputError

    parts = []
    if text:
        scoring = None if reader is None else reader.model.scoring
        parts.append(text_embedding(text, template_set, loaded, scoring, config.cache_dir(model.cache_dir),
                                    model.use_cache))
    for path, vector, message in image_embeddings(list(like), reader, encoder):
        if vector is None:
            raise InputError(f"--like {path}: {message or 'no such image file, and not in the store'}")
        parts.append(vector)
    return combine_query(parts)


def _header_size(path: str) -> tuple[int, int] | None:
    """An image's size from its header (a stored image was not decoded in this run)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def dupes_job(store=None, inputs: Sequence[str] = (), model=None, decode=None, engine=None,
              threshold: float = DUPE_THRESHOLD, progress: Progress | None = None) -> Found:
    """Near-duplicate groups among the store's images, or the inputs' (written through the store when one is
    given).  With a store alone nothing is loaded."""
    import os

    from .options import DecodeOptions, EngineOptions, ModelOptions

    model, decode, engine = model or ModelOptions(), decode or DecodeOptions(), engine or EngineOptions()
    if store is not None and not inputs:
        from .store import open_store

        reader = open_store(store)
        counts: dict = {}
        groups = dupes_in_store(reader, threshold, counts)
        return Found(reader.describe(), groups=groups, errors=[], searched=counts["searched"],
                     videos=counts["videos"])
    from .embeddings import open_encoder
    from .paths import display_path, split_frame

    paths, chunks, sizes, lengths, errors = [], [], [], [], []
    with open_encoder(model, decode, engine, store) as encoder:
        for items, features in encoder.batches(list(inputs), progress):
            for item in items:
                if item.error:
                    errors.append((display_path(item.path), item.error[1]))
                    continue
                paths.append(display_path(item.path))
                frame = split_frame(item.path)[1] is not None
                sizes.append(item.size or (None if frame else _header_size(item.path)))
                try:
                    lengths.append(os.stat(split_frame(item.path)[0]).st_size)  # a frame's: its video's
                except OSError:
                    lengths.append(None)
            if features is not None:
                chunks.append(as_array(features))
        described = encoder.describe()
    found = find_all_dupes(paths, np.concatenate(chunks), sizes, lengths, threshold) if chunks else AllDupes([])
    return Found(described, groups=found.groups, errors=fold_errors(errors), searched=found.photos + found.videos,
                 videos=found.videos)
