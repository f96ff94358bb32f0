"""The input pipelines (zfnet.data.loaders, zfnet.data.batches): JPEG headers decide the decoder;
the "pixels" (cpu loader) and "encoded" (gpu loader, run here on the CPU) forms give the "float"
items' inputs, crop for crop; the device finds and names a file it cannot decode; the
prefetching threads change nothing (batches in order, errors where their batch was); workers
hand batches over in shared memory."""

from __future__ import annotations

import io
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.data.test_shards import _image, make_folder
from zfnet.data import BadImageError, BrokenImageWarning, codec, load_dataset, load_rgb
from zfnet.data import batches as batches_mod
from zfnet.data.batches import (
    BatchInputs,
    DeviceBatches,
    Prepared,
    collate_encoded,
    collate_pixels,
)
from zfnet.data.images import decode_plain_jpeg, resize_center_crop
from zfnet.data.jpeg import read_header
from zfnet.data.loaders import (
    LoaderWarning,
    as_inputs,
    collate_for,
    for_loader,
    formed,
    item_form,
    loader_kind,
    parse_workers,
    resolve_workers,
)
from zfnet.data.shard_writer import write_shards
from zfnet.data.slots import Parcel
from zfnet.data.transforms import collate, decoded_on_host
from zfnet.train.recipe import SeededSamples

pytestmark = pytest.mark.filterwarnings("ignore::zfnet.data.images.BrokenImageWarning")

SPEC = "size=32"  # 32 px crops of 37 px images
FULL = 37  # the full size of SPEC's crops
CPU = torch.device("cpu")


def _jpeg(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    (img.convert(mode) if mode else img).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _bad_tables(data: bytes) -> bytes:
    """`data` with its first Huffman table zeroed: its markers parse, no decoder takes it."""
    d = bytearray(data)
    k = d.find(b"\xff\xc4")
    n = int.from_bytes(d[k + 2:k + 4], "big")
    d[k + 4:k + 2 + n] = bytes(n - 2)
    return bytes(d)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """test_shards' folder (EXIF-rotated, grey, palette PNG, small and broken files) with a
    CMYK, a progressive and two large JPEGs (which the CPU decodes at half scale), and a val
    JPEG whose markers parse but whose Huffman table is garbage."""
    root = make_folder(tmp_path_factory.mktemp("loaders") / "folder")
    rng = np.random.default_rng(1)
    Image.fromarray(_image(rng, 72, 96, 0)).convert("CMYK").save(
        root / "train" / "ant" / "cmyk.jpg", quality=95)
    Image.fromarray(_image(rng, 96, 72, 1)).save(root / "train" / "bee" / "progressive.jpg",
                                                  quality=95, progressive=True)
    for split in ("train", "val"):
        Image.fromarray(_image(rng, 160, 200, 2)).save(root / split / "cat" / "large.jpg",
                                                        quality=95)
    (root / "val" / "ant" / "tables.jpg").write_bytes(
        _bad_tables(_jpeg(_image(rng, 72, 96, 0), quality=95)))
    return root


# --- headers and the fast decoder ---

def test_headers_say_which_decoder_takes_a_file() -> None:
    rng = np.random.default_rng(0)
    rgb = _image(rng, 40, 60, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    one = Image.Exif()
    one[0x0112] = 1
    cases = {  # name: (bytes, plain, device_decodable)
        "baseline": (_jpeg(rgb), True, True),
        "grey": (_jpeg(rgb[..., 0]), True, True),
        "exif-1": (_jpeg(rgb, exif=one), True, True),
        "progressive": (_jpeg(rgb, progressive=True), True, False),
        "exif-rotated": (_jpeg(rgb, exif=exif), False, False),
        "cmyk": (_jpeg(rgb, "CMYK"), False, False),
        "truncated": (_jpeg(rgb)[:400], False, False),
    }
    for name, (data, plain, device) in cases.items():
        h = read_header(data)
        assert (h.plain, h.device_decodable) == (plain, device), name
        assert (h.width, h.height) == (60, 40), name
        fast = decode_plain_jpeg(data)
        if plain:  # libjpeg-turbo through torchvision: PIL's pixels exactly
            assert torch.equal(fast, load_rgb(io.BytesIO(data))), name
        else:
            assert fast is None, name
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    for data in (png.getvalue(), b"", b"\xff\xd8 not a jpeg", b"\xff\xd8\xff\xda\x00\x02"):
        assert read_header(data) is None
    # large enough for PIL's DCT scaling: decoded that way, still load_rgb's pixels
    big = _jpeg(_image(rng, 160, 200, 1))
    assert torch.equal(decode_plain_jpeg(big, min_side=37),
                       load_rgb(io.BytesIO(big), min_side=37))
    assert decode_plain_jpeg(_bad_tables(big)) is None  # refused: load_rgb names it


# --- every form gives the float inputs ---

DEVICE_DECODERS = ["auto", "nvimgcodec", "torchvision"]  # (auto: TorchCodec where it loads)


@pytest.fixture(params=DEVICE_DECODERS)
def device_decoder(request, monkeypatch) -> str:
    """The library that decodes the "encoded" batches on the device (ZFNET_DEVICE_DECODER):
    on the CPU each is libjpeg-turbo, so the inputs must not change."""
    monkeypatch.setenv(codec.ENV, request.param)
    try:
        codec.device_decoder(CPU)
    except ValueError:  # nvImageCodec not installed (the lower ends' set)
        pytest.skip(f"{request.param} does not load here")
    return request.param


def _inputs(dataset, mode: str, form: str, indices: list[int], seed: int = 3,
            share: float = 0.0) -> list:
    """The inputs of `indices` in one batch of `form`, made on the CPU: (x, y, kept); `share`
    of the images decoded by the "workers" in the "encoded" form (`--loader mixed`)."""
    data = formed(dataset.with_mode(mode), form)
    if share:
        data.host_share = share
    if mode == "train":
        items = SeededSamples(data, seed).__getitems__(indices)
    else:
        items = [data[i] for i in indices]
    kept = [i for i, item in zip(indices, items, strict=True) if item is not None]
    x, y = DeviceBatches._hand_on(BatchInputs(data, CPU)(collate_for(data)(items)))
    return x, y, kept


@pytest.mark.parametrize("source", ["imagefolder", "shards", "squares", "raw"])
@pytest.mark.parametrize("mode", ["train", "centre", "ten_crop"])
def test_pixels_and_encoded_forms_give_the_float_inputs(folder, source, mode,
                                                        device_decoder) -> None:
    if source == "imagefolder":
        spec = f"imagefolder:{folder}?{SPEC}"
    else:  # the original bytes, or centre squares at the full size (`zfnet shards --square`,
        # or `--raw`: their pixels, which the "encoded" form hands over decoded)
        out = folder.parent / source
        if not out.exists():
            square = source in ("squares", "raw")
            write_shards(f"imagefolder:{folder}", out, resize=FULL if square else 0,
                         square=square, raw=source == "raw", workers=0)
        spec = f"shards:{out}?{SPEC}"
    bundle = load_dataset(spec)
    dataset = bundle.train if mode == "train" else bundle.val
    indices = list(range(len(dataset)))
    want_x, want_y, kept = _inputs(dataset, mode, "float", indices)
    broken = [i for i in indices if any(b in dataset.item_name(i) for b in ("broken",
                                                                              "tables"))]
    assert broken if source == "imagefolder" else True  # (`zfnet shards` leaves them out)
    assert kept == [i for i in indices if i not in broken]
    large = [k for k, i in enumerate(kept) if "large" in dataset.item_name(i)]
    assert len(large) == 1
    for form, share in (("pixels", 0.0), ("encoded", 0.0), ("encoded", 0.5)):
        x, y, _ = _inputs(dataset, mode, form, indices, share=share)  # (encoded: the device
        # drops broken files; with a share, the workers decode some of the images: mixed)
        assert torch.equal(y, want_y), form
        assert x.shape == want_x.shape and x.dtype == torch.float32, form
        if form == "pixels":
            assert torch.equal(x, want_x), form
            continue
        # encoded: decoded whole on the "device"; the CPU loader decodes the large image at
        # half scale (PIL's draft): that one differs by resampling (~1 level on average, up to
        # ~24 at the edges of the test images' bright square), the others not at all. Mixed:
        # the same where the workers decode the large one too (as the cpu loader does)
        if source in ("squares", "raw") or (share and decoded_on_host(kept[large[0]], share)):
            large = []  # (squares: every image stored at the full size, none large)
        same = [k for k in range(len(kept)) if k not in large]
        assert torch.equal(x[same], want_x[same]), form
        if large:
            diff = (x[large] - want_x[large]).abs()
            assert 0 < diff.mean() < 2.0 and diff.max() <= 32, (form, diff.mean(), diff.max())
    if mode == "train":  # the windows are the seeded crops: another seed, other inputs
        assert not torch.equal(_inputs(dataset, mode, "pixels", indices, seed=4)[0], want_x)


def test_the_device_finds_names_and_skips_a_file_it_cannot_decode(folder, monkeypatch,
                                                                   device_decoder) -> None:
    val = load_dataset(f"imagefolder:{folder}?{SPEC}").val
    bad = next(i for i in range(len(val)) if val.paths[i].name == "tables.jpg")
    good = [i for i in range(len(val)) if i != bad]
    encoded = val.with_form("encoded")
    batch = collate_encoded([encoded[i] for i in range(len(val))])
    assert int(batch.encoded.sum()) == len(val)  # every val file goes to the device
    with pytest.warns(BrokenImageWarning, match=str(val.paths[bad])):
        x, y = DeviceBatches._hand_on(BatchInputs(encoded, CPU)(batch))
    assert len(y) == len(val) - 1
    strict = BatchInputs(encoded, CPU)
    strict.strict = True
    with pytest.raises(BadImageError, match="tables.jpg") as e:
        strict(batch)
    assert e.value.path == val.paths[bad]

    # a file the device refuses that PIL reads: decoded on the host, the same input
    refused = val.read_encoded(good[0])
    real = batches_mod.decode_batch

    def picky(files, device):
        return [None if bytes(f.numpy()) == bytes(refused) else img
                for f, img in zip(files, real(files, device), strict=True)]

    monkeypatch.setattr(batches_mod, "decode_batch", picky)
    sub = collate_encoded([encoded[i] for i in good])
    x2, y2 = DeviceBatches._hand_on(BatchInputs(encoded, CPU)(sub))
    assert torch.equal(x2, x) and torch.equal(y2, y)  # the same inputs, in the same order
    want = [_inputs(val, "centre", "float", [i])[0] for i in good]
    large = [k for k, i in enumerate(good) if val.paths[i].name == "large.jpg"]
    for k, w in enumerate(want):
        if k not in large:
            assert torch.equal(x2[k:k + 1], w), val.paths[good[k]]


def test_decoded_on_host_is_a_fixed_spread_share() -> None:
    for share in (0.25, 0.5):
        chosen = [i for i in range(10_000) if decoded_on_host(i, share)]
        assert abs(len(chosen) / 10_000 - share) < 0.001
        # spread: any run of 64 indices holds about its share
        runs = [sum(decoded_on_host(i, share) for i in range(a, a + 64))
                for a in range(0, 9_000, 97)]
        assert min(runs) >= 64 * share - 3 and max(runs) <= 64 * share + 3
    assert not any(decoded_on_host(i, 0.0) for i in range(100))
    assert all(decoded_on_host(i, 1.0) for i in range(100))


def test_mixed_batches_keep_the_items_order_with_broken_files(folder, device_decoder) -> None:
    # the workers' images and the device's, a file only the device finds broken among them:
    # the same inputs, in item order, as the batch decoded all on the device (`cut_windows`
    # gathers them from their rows)
    val = load_dataset(f"imagefolder:{folder}?{SPEC}").val
    bad = next(i for i in range(len(val)) if val.paths[i].name == "tables.jpg")
    for mode in ("train", "centre", "ten_crop"):
        data = val.with_mode(mode).with_form("encoded")
        items = [data[i] for i in range(len(data))]  # (train: crops drawn once, used twice)
        with pytest.warns(BrokenImageWarning, match="tables.jpg"):
            want_x, want_y = DeviceBatches._hand_on(BatchInputs(data, CPU)(
                collate_encoded(items)))
        assert len(want_y) == len(data) - 1
        on_host = [i for i in range(len(data)) if decoded_on_host(i, 0.5) and i != bad]
        assert 0 < len(on_host) < len(data) - 1
        mixed = [(data.full_image(i).permute(1, 2, 0).contiguous(), *item[1:])
                 if i in on_host else item for i, item in enumerate(items)]
        batch = collate_encoded(mixed)
        assert int((~batch.encoded).sum()) == len(on_host)
        with pytest.warns(BrokenImageWarning, match="tables.jpg"):
            x, y = DeviceBatches._hand_on(BatchInputs(data, CPU)(batch))
        assert torch.equal(y, want_y), mode
        kept = [i for i in range(len(data)) if i != bad]
        # the large image: the cpu path decodes it at half scale (see above)
        same = [k for k, i in enumerate(kept) if not (i in on_host and "large" in
                                                      data.item_name(i))]
        assert torch.equal(x[same], want_x[same]), mode
        assert x.shape == want_x.shape


@pytest.mark.parametrize("shape", [(37, 37), (37, 50), (52, 37), (60, 45), (30, 41)])
def test_full_images_are_resize_center_crop_in_either_layout(shape) -> None:
    # decoded images whose memory is (H, W, 3) (nvImageCodec's) or (3, H, W) (torchvision's):
    # the same (F, F, 3) images, at the size already (cut only; odd margins round as
    # torchvision's centre crop) or resized
    g = torch.Generator().manual_seed(0)
    hwc = [torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=g) for _ in range(3)]
    want = torch.stack([resize_center_crop(h.permute(2, 0, 1), FULL).permute(1, 2, 0)
                        for h in hwc])
    for images in ([h.permute(2, 0, 1) for h in hwc],  # (3, H, W) views of (H, W, 3)
                   [h.permute(2, 0, 1).contiguous() for h in hwc]):
        got = batches_mod.full_images(images, FULL)
        assert got.shape == (3, FULL, FULL, 3) and torch.equal(got, want)


def test_small_tensors_go_to_the_device_without_waiting() -> None:
    params = torch.tensor([[1, 2, 0], [3, 4, 1]])
    assert batches_mod.to_device(params, CPU) is params  # nothing to copy on the CPU
    if torch.cuda.is_available():  # from page-locked memory, queued on the stream
        cuda = torch.device("cuda")
        got = batches_mod.to_device(params, cuda)
        assert got.device.type == "cuda" and torch.equal(got.cpu(), params)
        pinned = params.pin_memory()
        assert torch.equal(batches_mod.to_device(pinned, cuda).cpu(), params)


def _batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("zfnet-batches")]


@pytest.mark.parametrize("threads", [1, 2])
def test_prefetching_threads_give_the_same_batches_and_raise_in_the_consumer(
        folder, threads) -> None:
    bundle = load_dataset(f"imagefolder:{folder}?{SPEC}")
    train = SeededSamples(bundle.train.with_form("encoded"), seed=0)
    loader = DataLoader(train, batch_size=4, collate_fn=collate_encoded)
    inputs = BatchInputs(train.dataset, CPU)
    inline = list(DeviceBatches(loader, inputs))
    ahead = DeviceBatches(loader, inputs, prefetch=2, threads=threads)
    assert len(ahead) == len(loader) and ahead.sampler is loader.sampler
    for (a, ya), (b, yb) in zip(inline, ahead, strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    for stop_at in (0, 2):  # a consumer that stops early leaves no thread behind
        it = iter(DeviceBatches(loader, inputs, prefetch=1, threads=threads))
        for _ in range(stop_at + 1):
            next(it)
        it.close()
        assert not _batch_threads()
    strict = load_dataset(f"imagefolder:{folder}?{SPEC}", strict=True).val.with_form("encoded")
    with pytest.raises(BadImageError, match="tables.jpg"):
        list(DeviceBatches(DataLoader(strict, batch_size=4, collate_fn=collate_encoded),
                           BatchInputs(strict, CPU), prefetch=2, threads=threads))
    assert not _batch_threads()


class _SlowInputs:
    """Stands for BatchInputs: batch k (an int) -> inputs [k]; batch 0 takes long, so that
    later ones are made first; `fail_at` raises there. Counts the calls at once."""

    device = CPU

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at, self.lock = fail_at, threading.Lock()
        self.started: list[int] = []
        self.active = self.most = 0

    def new_pass(self) -> None:
        """As BatchInputs' (which forgets the last pass's slots): nothing to forget here."""

    def __call__(self, batch: int) -> Prepared:
        with self.lock:
            self.started.append(batch)
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.3 if batch == 0 else 0.02)
        with self.lock:
            self.active -= 1
        if batch == self.fail_at:
            raise ValueError(f"batch {batch} failed")
        return Prepared(torch.tensor([batch]), torch.tensor([batch]), [])


def _failing_loader(n: int, fail_at: int):
    for k in range(n):
        if k == fail_at:
            raise OSError(f"the loader failed at {k}")
        yield k


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_hand_batches_on_in_order_and_errors_where_their_batch_was(threads) -> None:
    ahead = 2
    inputs = _SlowInputs()
    got = []
    for x, _ in DeviceBatches(list(range(12)), inputs, prefetch=ahead, threads=threads):
        k = int(x)
        got.append(k)
        # never more than `ahead` batches (or one per thread) beyond the one handed on
        assert len(inputs.started) <= k + 1 + max(ahead, threads)
    assert got == list(range(12))  # in order, although batch 0 was made last
    # the threads worked at once (batch 0 meanwhile), never more than one per batch ahead
    assert min(threads, 2) <= inputs.most <= max(ahead, threads)
    assert sorted(inputs.started) == list(range(12))  # each batch made once
    # an error making batch 5: batches 0-4 first, then the error; no thread left behind
    failing, got = _SlowInputs(fail_at=5), []
    with pytest.raises(ValueError, match="batch 5 failed"):
        for x, _ in DeviceBatches(list(range(12)), failing, prefetch=ahead, threads=threads):
            got.append(int(x))
    assert got == [0, 1, 2, 3, 4] and not _batch_threads()
    # an error of the loader's: the same
    got = []
    with pytest.raises(OSError, match="failed at 3"):
        for x, _ in DeviceBatches(_failing_loader(8, 3), _SlowInputs(), prefetch=ahead,
                                  threads=threads):
            got.append(int(x))
    assert got == [0, 1, 2] and not _batch_threads()
    assert [int(x) for x, _ in DeviceBatches([], inputs, prefetch=ahead, threads=threads)] == []


def test_workers_hand_batches_over_in_shared_memory(folder) -> None:
    bundle = load_dataset(f"imagefolder:{folder}?{SPEC}")
    for form, collate_fn in (("float", collate), ("pixels", collate_pixels),
                             ("encoded", collate_encoded)):
        data = formed(bundle.val, form)
        batch = next(iter(DataLoader(data, batch_size=6, num_workers=1, collate_fn=collate_fn)))
        big = batch[0] if form != "encoded" else batch.data
        if form == "pixels":  # in the worker's slot, which it sends the first time
            assert isinstance(big, Parcel) and len(big) == len(batch.labels)
            big = big.memory
        assert big.is_shared() and len(big), form


def test_loader_choice_and_workers(folder) -> None:
    bundle = load_dataset(f"imagefolder:{folder}?{SPEC}")
    cuda = torch.device("cuda")  # only its type is read
    assert loader_kind("auto", bundle.train, cuda) == "gpu"
    assert loader_kind("auto", bundle.train, CPU) == "cpu"
    assert loader_kind("auto", bundle.train, cuda, erasing=0.5) == "cpu"
    assert item_form("cpu", bundle.train) == "pixels"
    assert item_form("cpu", bundle.train, erasing=0.5) == "float"
    assert item_form("gpu", bundle.train) == "encoded"
    assert item_form("mixed", bundle.train) == "encoded"
    assert for_loader("gpu", bundle.train).host_share == 0.0
    mixed = for_loader("mixed", bundle.train, share=0.4)
    assert mixed.host_share == 0.4 and bundle.train.host_share == 0.0  # a copy
    assert for_loader("gpu", bundle.train, share=0.4).host_share == 0.0  # only mixed shares
    with pytest.raises(ValueError, match="share=1.5 is not valid; valid: 0 to 1"):
        for_loader("mixed", bundle.train, share=1.5)
    synthetic = load_dataset("synthetic?n_train=8&n_val=4&size=32")
    assert loader_kind("auto", synthetic.train, cuda) == "cpu"
    assert item_form("cpu", synthetic.train) == "float"
    for device_decodes in ("gpu", "mixed"):
        # it works on the CPU (the GPU path's dry run), and says how it differs there
        with pytest.warns(LoaderWarning, match=f"--loader {device_decodes} on the cpu: the "
                          "main process decodes the JPEGs"):
            assert loader_kind(device_decodes, bundle.train, CPU) == device_decodes
        with pytest.raises(ValueError, match=f"--loader {device_decodes} decodes image files"):
            loader_kind(device_decodes, synthetic.train, CPU, spec="synthetic")
    with pytest.raises(ValueError, match="--loader cpu"):
        loader_kind("gpu", bundle.train, CPU, erasing=0.5)
    with pytest.raises(ValueError, match="valid: auto, cpu, gpu, mixed"):
        loader_kind("fast", bundle.train, CPU)
    assert resolve_workers("auto", CPU) == 0 and resolve_workers(3, CPU) == 3
    assert resolve_workers("auto", cuda) >= 1
    assert parse_workers("auto") == "auto" and parse_workers("4") == 4
    for bad in ("-1", "many", 1.5):
        with pytest.raises(ValueError, match="auto or a number >= 0"):
            parse_workers(bad)
    assert type(as_inputs(DataLoader(synthetic.val), synthetic.val, CPU)) is DataLoader


def test_workers_auto_shares_the_cores_among_torchruns_processes(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    cuda = torch.device("cuda")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_workers("auto", cuda) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resolve_workers("auto", cuda) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert resolve_workers("auto", cuda) == 1
    assert resolve_workers(0, cuda) == 0


def test_a_device_decoder_that_refuses_most_files_is_said_once(folder, monkeypatch) -> None:
    # (nvImageCodec with a broken nvJPEG, say): the files are decoded on the host, the same
    # inputs, and the user is told that this is slow and how to choose another decoder
    val = load_dataset(f"imagefolder:{folder}?{SPEC}").val
    encoded = val.with_form("encoded")
    batch = collate_encoded([encoded[i] for i in range(len(val))])
    want_x, want_y = DeviceBatches._hand_on(BatchInputs(encoded, CPU)(batch))
    monkeypatch.setattr(batches_mod, "decode_batch", lambda files, device: [None] * len(files))
    inputs = BatchInputs(encoded, CPU)
    with pytest.warns(RuntimeWarning, match=r"refused \d+ of the \d+ files of a batch that PIL "
                                            r"reads; .* ZFNET_DEVICE_DECODER names another"):
        x, y = DeviceBatches._hand_on(inputs(batch))
    assert torch.equal(y, want_y) and x.shape == want_x.shape
    kept = [i for i in range(len(val)) if "tables" not in val.item_name(i)]  # (broken)
    same = [k for k, i in enumerate(kept)  # (PIL decodes the large one at half scale)
            if "large" not in val.item_name(i)]
    assert len(kept) == len(y) and len(same) == len(y) - 1
    assert torch.equal(x[same], want_x[same])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        inputs(batch)  # said once
