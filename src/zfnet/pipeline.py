"""Each analysis of the paper as one call on a trained model and a dataset, writing its figures
and report section into a run directory. `zfnet analyze <name>` and `zfnet demo` call these;
the analyses themselves live in `zfnet.analyses`, one module per idea.

Any CNN: the gallery, filters, invariance, probes and the randomisation check take any model
(zfnet's, torchvision's, a user's own) with a `DataBundle` of its inputs; the layers default to
`zfnet.models.feature_layers` and its kin; where the dataset's labels are not the model's classes
the class followed is the model's own prediction (`zfnet.analyses.classes`); so do occlusion,
correspondence (parts marked on the user's images) and transfer. Evolution follows a run's
kept epochs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from zfnet.data import DataBundle, collate, load_dataset
from zfnet.data.bundle import val_words
from zfnet.data.photos import load_photos
from zfnet.data.picks import file_name, first_item, item_paths, pick_items
from zfnet.data.preprocess import Preprocessing
from zfnet.data.spec import parse_spec, with_options
from zfnet.data.words import labels_of
from zfnet.models import zfnet_config

if TYPE_CHECKING:
    from zfnet.analyses.correspondence import CorrespondenceRow
    from zfnet.analyses.evolution import EvolutionResult
    from zfnet.analyses.gallery import GalleryResult
    from zfnet.analyses.probes import ProbeRow
    from zfnet.analyses.sanity import DataRandomizationResult, RandomizationResult
    from zfnet.analyses.transfer import TransferRow
    from zfnet.report import Section

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def _present(model: nn.Module, names: tuple[str, ...]) -> list[str]:
    from zfnet.models import layer_info

    infos = layer_info(model)
    return [n for n in names if n in infos]


def _size(bundle: DataBundle) -> tuple[int, int]:
    """(H, W) of the bundle's model inputs (centre crops of val: its first readable image)."""
    x = first_item(_centre(bundle), val_words(bundle))[1][0]
    return int(x.shape[-2]), int(x.shape[-1])


def check_fits(model: nn.Module, bundle: DataBundle, classes: bool = False) -> None:
    """ValueError unless `bundle`'s images have the channels and size `model` was built for (and,
    with `classes`, its number of classes): analyses of a model run on the kind of data it was
    trained on (`analyze transfer` adapts other data)."""
    cfg = zfnet_config(model)
    if cfg is None:  # not a zfnet model: its input shape is not recorded
        return
    if (bundle.in_channels, bundle.input_size) != (cfg.in_channels, cfg.input_size):
        raise ValueError(
            f"dataset {bundle.spec!r} gives {bundle.in_channels}-channel {bundle.input_size} px "
            f"images but the model takes {cfg.in_channels}-channel {cfg.input_size} px ones; "
            "use the dataset it was trained on (the default), or `zfnet analyze transfer`")
    if classes and bundle.num_classes != cfg.num_classes:
        raise ValueError(f"dataset {bundle.spec!r} has {bundle.num_classes} classes but the "
                         f"model has {cfg.num_classes} outputs")


def _centre(bundle: DataBundle, split: str = "val") -> Any:
    ds = getattr(bundle, split)
    return ds.with_mode("centre") if ds.mode != "centre" else ds


def _normalizer(bundle: DataBundle):
    """Pixels (N, C, S, S) in 0..255 -> model inputs, as the bundle's items were made
    (`DataBundle.input_preprocessing`): its model's `(x - mean) / std`, or minus the centre crop
    of the mean image (the paper's convention)."""
    return bundle.input_preprocessing.normalize


def _pixel_scale(bundle: DataBundle) -> torch.Tensor | None:
    """(C,) model-input units -> the image's pixel units, for a bundle made for a model whose
    inputs are divided by a std; None for the paper's convention (std 1)."""
    return None if bundle.preprocessing is None else bundle.preprocessing.pixel_scale()


def mining_key(model: nn.Module, bundle: DataBundle, n_images: int) -> str:
    """What a top-k mining of `model` over the first `n_images` centre crops of `bundle`'s val
    split is valid for (`zfnet.analyses.topk.mining_digest`): the weights, the spec, the sizes,
    the preprocessing, the mean image and the files' sizes and times (a file replaced under its
    name: mined afresh). The gallery and the atlas keep a stopped mining under it."""
    import hashlib

    from zfnet.analyses.topk import mining_digest

    pre = bundle.preprocessing
    return mining_digest(model, {
        "data": bundle.spec, "images": n_images,
        "size": [bundle.input_size, bundle.full_size],
        "pre": pre.to_dict() if pre is not None else None,
        "mean": hashlib.sha256(bundle.mean.detach().cpu().contiguous().numpy().tobytes())
        .hexdigest()},
        list(getattr(bundle.val, "paths", None) or [])[:n_images])


def gallery(model: nn.Module, bundle: DataBundle, run_dir: str | Path, *, k: int = 9,
            n_images: int = 1000, n_maps: int = 16, layers: list[str] | None = None,
            rule: str = "deconvnet", map_rule: str = "strongest", batch_size: int = 64,
            device: str | torch.device | None = None, distributed: bool = False,
            num_workers: int = 0, class_names: list[str] | None = None,
            progress: bool = False, maps: Sequence[int] | None = None,
            precision: str = "float32", seed: str = "activation") -> GalleryResult:
    """Fig. 2: the top-k gallery over the first `n_images` val images (centre crops). Layers
    default to `zfnet.models.feature_layers` (conv1…conv5 on zfnet's models). `maps`: the
    maps shown in every layer (checked before mining), instead of `n_maps` chosen by
    `map_rule`. `distributed`:
    mined across the processes of the process group, written by the first
    (`zfnet.analyses.gallery.run_topk_gallery`); `num_workers`: the mining's DataLoader
    workers; `class_names`: the model's, named with the units of its last layer (its class
    scores) where it is shown; `progress`: a progress bar of the mining on stderr. The mining
    is kept in `run_dir/gallery` where it stops, and the same call continues it. `precision`:
    what the projections go down in off a plain chain (float32, bfloat16); `seed`: what each
    unit goes down with, its activation or 1 (`zfnet.deconvnet.project_layers`)."""
    from zfnet.analyses.gallery import run_topk_gallery
    from zfnet.models import score_layer

    check_fits(model, bundle)
    val = _centre(bundle)
    n = min(n_images, len(val))
    chosen = None
    if maps:
        from zfnet.analyses.gallery import default_layers

        layers = layers or default_layers(model, _size(bundle))
        chosen = {name: list(dict.fromkeys(maps)) for name in layers}  # in the order given
        counts = map_counts(model, bundle, layers)
        for name in layers:
            bad = [m for m in maps if m >= counts[name]]
            if bad:
                raise ValueError(f"map{'s' * (len(bad) > 1)} {', '.join(map(str, bad))} "
                                 f"outside the {counts[name]} maps of {name}; valid: "
                                 f"0..{counts[name] - 1}")
    return run_topk_gallery(
        model, Subset(val, range(n)), layers or None, k,
        Path(run_dir) / "gallery", maps=chosen, n_maps=n_maps, map_rule=map_rule, rule=rule,
        display_image=bundle.raw_val, run_dir=run_dir, batch_size=batch_size, device=device,
        pixel_scale=_pixel_scale(bundle), distributed=distributed, num_workers=num_workers,
        unit_names={score_layer(model): class_names} if class_names else None,
        progress=progress, journal_key=mining_key(model, bundle, n), precision=precision,
        seed=seed,
    )


def map_counts(model: nn.Module, bundle: DataBundle, layers: Sequence[str]) -> dict[str, int]:
    """The number of maps (a flat layer's units) of each of `layers`, by one forward pass of
    the first readable val image."""
    from zfnet.activations import get_activations, shown_units
    from zfnet.models import eval_mode

    x = first_item(_centre(bundle))[1][0][None]
    with eval_mode(model):
        acts = get_activations(model, x, list(layers))
    return {name: int(shown_units(name, a).shape[1]) for name, a in acts.items()}


def filters(models: dict[str, nn.Module],
            bundle: DataBundle | Mapping[str, DataBundle] | None, run_dir: str | Path,
            n_images: int = 1000, input_size: int | tuple[int, int] | None = None) -> Section:
    """Fig. 6: filter mosaics and diagnostics of each model's first two convolutions
    (`zfnet.models.first_convs`); on zfnet's models, maps never active after their ReLU are
    measured over `n_images` val images of `bundle` — one for all, or each model's own, by
    its label (runs trained on different data) — (other models, or no bundle: near-zero
    filters only). `input_size`: the models' input side when there is no bundle."""
    from zfnet.analyses.filters import filters_section
    from zfnet.analyses.topk import mine_topk
    from zfnet.models import first_convs, is_zfnet_model

    own = dict(bundle) if isinstance(bundle, Mapping) else \
        dict.fromkeys(models, bundle) if bundle is not None else {}
    for label, b in own.items():  # every model checked before any is measured
        check_fits(models[label], b)
    if own:
        input_size = _size(next(iter(own.values())))
    if input_size is None:
        raise ValueError("filters needs a dataset or the models' input size")
    # each model's first two convolutions, found once (a forward pass each)
    convs = {label: first_convs(m, 2, _size(own[label]) if label in own else input_size)
             for label, m in models.items()}
    acts, second = {}, {}  # never-active maps; layer 2's strongest, projected (Fig. 6 d, e)
    for label, b in own.items():
        m = models[label]
        val = _centre(b)
        seen = range(min(n_images, len(val)))
        if is_zfnet_model(m):
            tk = mine_topk(m, val, ["relu1", "relu2"], k=1, indices=seen)
            acts[label] = {"conv1": tk["relu1"].values[:, 0], "conv2": tk["relu2"].values[:, 0]}
            second[label] = ("relu2", tk["relu2"], Subset(val, list(seen)))
        elif len(convs[label]) == 2:
            layer = convs[label][1]
            tk = mine_topk(m, val, [layer], k=1, indices=seen)
            second[label] = (layer, tk[layer], Subset(val, list(seen)))
    return filters_section(run_dir, models, acts, layers=convs, input_size=input_size,
                           second_layer=second)


def evolution(run_dir: str | Path, bundle: DataBundle, out_dir: str | Path | None = None,
              n_images: int = 1000, n_maps: int = 6, batch_size: int = 64,
              device: str = "cpu", rule: str = "deconvnet",
              layers: Sequence[str] | None = None,
              progress: Callable[[int, int], None] | None = None
              ) -> tuple[Section, EvolutionResult]:
    """Fig. 4 from the checkpoints kept in `run_dir` (training images, centre crops), each
    model on `device` (auto: cuda if there), mined `batch_size` images at a time, the units
    projected by `rule` (deconvnet, guided or gradient). `layers`: whose maps are followed
    (default: zfnet's conv1…conv5, any other architecture's main stages). progress:
    `feature_evolution`'s (images mined and units projected)."""
    from zfnet.analyses.evolution import evolution_section, feature_evolution
    from zfnet.models import feature_layers, is_zfnet_model
    from zfnet.train import list_checkpoints, load_model
    from zfnet.train.distributed import resolve_device

    dev = resolve_device(device)
    ckpts = [(e, load_model(p, device=dev)[0]) for e, p in list_checkpoints(run_dir)]
    if not ckpts:
        raise FileNotFoundError(
            f"{run_dir} holds no kept checkpoints (checkpoints/epoch_NNNN/): give a run directory "
            "of `zfnet train` (--keep-epochs says which epochs it keeps)")
    if len(ckpts) < 2:
        raise ValueError(f"{run_dir} keeps 1 checkpoint (epoch {ckpts[0][0]}); evolution "
                         "compares 2 or more (train with --keep-epochs)")
    check_fits(ckpts[-1][1], bundle)
    last = ckpts[-1][1]
    # zfnet's conv1…conv5; another architecture's stages (a ResNet's relu, layer1…layer4)
    if not layers:
        layers = _present(last, CONV_LAYERS) if is_zfnet_model(last) else \
            feature_layers(last, _size(bundle))
    res = feature_evolution(ckpts, _centre(bundle, "train"), layers, n_maps, n_images,
                            batch_size=batch_size, rule=rule, progress=progress)
    return evolution_section(out_dir or run_dir, res), res


def invariance(model: nn.Module, bundle: DataBundle | None, run_dir: str | Path,
               n_dataset_images: int = 5,
               normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
               layers: Sequence[str] | None = None, *,
               preprocessing: Preprocessing | None = None,
               class_names: Sequence[str] | None = None,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Fig. 5 on 5 real photos (class followed: the first prediction) and on
    `n_dataset_images` dataset images (true class followed where the dataset's labels are the
    model's classes, else the first prediction). `layers`: whose feature vectors are compared
    (default `zfnet.analyses.invariance.default_layers`: zfnet's norm1 and relu7, any other
    model's first feature layer and the vector its classifier reads). `normalize`: pixels ->
    model inputs (default: as the bundle's items were made). `bundle` None: the photos alone,
    made into the inputs of `preprocessing` (a pretrained model's: its crop, channels, mean and
    std). `class_names`: the model's (default: the dataset's, where they are the model's
    classes), naming in the legends the class each image's p(class) follows. Returns the mean
    distances per transformation and layer, per set of images. progress: called with (passes
    made, passes in all), one a set of images at each amount of each transformation."""
    from zfnet.analyses.classes import class_outputs
    from zfnet.analyses.invariance import (
        DEFAULT_VALUES,
        KINDS,
        default_layers,
        invariance,
        invariance_section,
    )
    from zfnet.progress import tally

    if bundle is None:
        if preprocessing is None:
            raise ValueError("invariance without a dataset needs the model's preprocessing")
        norm = normalize or preprocessing.normalize
        size, channels = preprocessing.crop, preprocessing.in_channels
    else:
        check_fits(model, bundle)  # other classes, or none: the prediction is followed
        norm = normalize or _normalizer(bundle)
        size, channels = bundle.input_size, bundle.in_channels
    chosen = list(dict.fromkeys(layers or default_layers(model, size if bundle is None
                                                         else _size(bundle))))
    photos, photo_names = load_photos(size, channels=channels)
    sets = [("invariance_photos", photos.float(), None, photo_names,
             f"Invariance on {len(photo_names)} built-in photos (Fig. 5)",
             f"The images: {len(photo_names)} sample photographs that ship with scikit-image "
             f"and scikit-learn ({', '.join(photo_names)}), the same for every model and "
             "dataset, so that models can be compared on them; the class followed is the one "
             "each is first predicted as.")]
    outputs = None if bundle is None else class_outputs(model, bundle)  # each class's output
    if bundle is not None:
        val = _centre(bundle)
        # one image per class while classes last, then the next ones (readable files only)
        picks = [i for i, _ in pick_items(val, n_dataset_images, one_per_class=True)]
        if not picks:
            raise ValueError(f"none of {val_words(bundle)} can be read (each file is broken)")
        names = [_image_name(bundle, i) for i in picks]
        spec = bundle.spec or "the dataset"
        sets.append((
            "invariance_dataset", torch.stack([bundle.raw_val(i) for i in picks]).float(),
            [outputs[val.targets[i]] for i in picks] if outputs is not None else None, names,
            f"Invariance on {len(names)} image{'s' * (len(names) != 1)} of {spec} (Fig. 5)",
            f"The images: {len(names)} of {spec}"
            + (" (its val split, one per class while classes last)" if bundle.class_names
               else "") + "."))
    if class_names is None and bundle is not None and \
            outputs == list(range(bundle.num_classes)):  # the dataset's classes: its names
        class_names = labels_of(bundle)
    out: dict[str, Any] = {}
    went = tally(progress, len(sets) * sum(len(DEFAULT_VALUES[kind]) for kind in KINDS))
    for key, imgs, lab, tnames, title, about in sets:
        res = [invariance(model, imgs, norm, kind, layers=chosen, labels=lab, progress=went)
               for kind in KINDS]
        invariance_section(run_dir, res, tnames, key=key, title=title, about=about,
                           order=50 if key.endswith("photos") else 51,
                           paper_layers=not layers, class_names=class_names, images=imgs)
        out[key] = {r.kind: {name: r.distance[name].mean().item() for name in chosen}
                    for r in res}
    return out


def _image_name(bundle: DataBundle, i: int) -> str:
    """Val image i in a figure's legend: its class where the dataset has labels, else its
    file's name (or its index)."""
    t = bundle.val.targets[i]
    if 0 <= t < len(bundle.class_names):
        return labels_of(bundle)[t]  # with its words (words=FILE)
    return file_name(bundle.val, i) or str(i)


SYNTHETIC_PARTS = ("eye_left", "eye_right", "mouth")  # the built-in faces' parts, Table 1's


def correspondence(model: nn.Module, bundle: DataBundle, run_dir: str | Path,
                   class_name: str | None = None, n_images: int | None = None,
                   parts: tuple[str, ...] | None = None, random_draws: int = 20, *,
                   parts_file: str | Path | None = None,
                   layers: tuple[str, ...] | None = None) -> list[CorrespondenceRow]:
    """Fig. 8 / Table 1 on any model: the same part masked in each of several images, at
    `layers` (default: the paper's layers 5 and 7, `analyses.correspondence.default_layers`).

    The images and their parts: with `parts_file` (`zfnet.data.parts`), the images it names in
    `bundle`'s folder (`images:DIR`), each part's box brought to the model's input as the
    image is (`Preprocessing.fit_mask`); else the val images of `class_name` (default 'face')
    of a dataset with part masks (the built-in `synthetic`). `n_images`: the first N of them
    (default: every image the file names; 5 faces, the paper's number). `parts`: which
    (default: every part the file names, each marked on every image; the faces' eyes and
    mouth)."""
    from zfnet.analyses.correspondence import correspondence as corr
    from zfnet.analyses.correspondence import (
        correspondence_section,
        occluded_views,
        plot_correspondence,
    )

    check_fits(model, bundle)
    if parts_file is not None:
        if class_name is not None:
            raise ValueError("a class picks the images of a dataset with part masks; with a "
                             "parts file, the file names the images")
        names, x, masks = _marked_parts(bundle, parts_file, n_images, parts)
        what = f"{Path(parts_file).name} (parts marked by hand)"
    else:
        names, x, masks = _synthetic_parts(bundle, class_name or "face", n_images or 5,
                                           parts or SYNTHETIC_PARTS)
        what = f"the class '{class_name or 'face'}'"
    rows = corr(model, x, masks, layers=layers, random_draws=random_draws)
    pixels = bundle.input_preprocessing.to_pixels(occluded_views(x, rows))
    figure = plot_correspondence(pixels, rows, names,
                                 Path(run_dir) / "figures" / "correspondence.png")
    correspondence_section(run_dir, rows, len(names), what, figure=figure)
    return rows


def _synthetic_parts(bundle: DataBundle, class_name: str, n_images: int,
                     parts: tuple[str, ...]) -> tuple[list[str], torch.Tensor, dict]:
    """(names, inputs (N, C, S, S), {part: bool (N, S, S)}) of the first `n_images` val images
    of `class_name` in a dataset with part masks."""
    val = _centre(bundle)
    if not hasattr(val, "sample"):
        raise ValueError(f"dataset {bundle.spec!r} has no part masks; mark the parts on your "
                         "images in a parts file (--parts-file), or use the built-in "
                         "'synthetic' dataset's faces")
    if class_name not in bundle.class_names:
        raise ValueError(f"class {class_name!r} is not in {bundle.spec!r}; valid: "
                         f"{', '.join(bundle.class_names)}")
    label = bundle.class_names.index(class_name)
    idx = [i for i in range(len(val)) if val.targets[i] == label][:n_images]
    if len(idx) < 2:
        raise ValueError(f"class {class_name!r} has {len(idx)} val image(s) in {bundle.spec!r}; "
                         "correspondence needs at least 2")
    samples = [val.sample(i) for i in idx]
    unknown = [p for p in parts if p not in samples[0].parts]
    if unknown or not parts:
        raise ValueError(f"part(s) {', '.join(map(repr, unknown)) or '(none)'} not in class "
                         f"{class_name!r}; valid: {', '.join(samples[0].parts)}")
    x = torch.stack([val[i][0] for i in idx])  # (N, C, S, S) model inputs
    masks = {p: torch.from_numpy(np.stack([s.parts[p] for s in samples])) for p in parts}
    return [f"{class_name} {i}" for i in idx], x, masks


def _marked_parts(bundle: DataBundle, parts_file: str | Path, n_images: int | None,
                  parts: tuple[str, ...] | None) -> tuple[list[str], torch.Tensor, dict]:
    """(names, inputs (N, C, S, S), {part: bool (N, S, S)}) of the images a parts file marks
    in `bundle`'s folder, each part's box or outline fitted to the model's input as its image
    is."""
    from zfnet.data.imagefolder import decode_file
    from zfnet.data.parts import (
        PartCutWarning,
        find_images,
        part_mask,
        past_image,
        read_parts,
        region_bounds,
    )

    spec = parse_spec(bundle.spec) if bundle.spec else None
    val = _centre(bundle)
    files = item_paths(val)
    if spec is None or spec.name != "images" or files is None:
        raise ValueError(f"a parts file marks images of a folder; give that folder as "
                         f"--data images:DIR (not {bundle.spec or 'this dataset'!r})")
    boxes = read_parts(parts_file)
    names = list(boxes)[:n_images] if n_images else list(boxes)
    if len(names) < 2:
        raise ValueError(f"parts file {parts_file} marks {len(boxes)} image(s)"
                         f"{f', --images {n_images} taken' if n_images else ''}; correspondence "
                         "compares at least 2")
    folder = Path(spec.path).expanduser()
    paths = find_images({n: boxes[n] for n in names}, folder, files, parts_file)
    wanted = parts or tuple(dict.fromkeys(p for n in names for p in boxes[n]))
    for n in names:
        lacking = [p for p in wanted if p not in boxes[n]]
        if lacking:
            marked = [p for p in wanted if p in boxes[n]]
            raise ValueError(
                f"parts file {parts_file}: part {lacking[0]!r} is not marked on {n!r} (it marks "
                f"{', '.join(map(repr, boxes[n]))}); each part is masked on every image: mark "
                "it" + (f", or leave it out: --parts {','.join(marked)}" if marked else ""))
    index = {p: i for i, p in enumerate(files)}
    fit = bundle.input_preprocessing.fit_mask
    xs, masks = [], {p: [] for p in wanted}
    for n in names:
        item = val[index[paths[n]]]
        if item is None:  # broken: said by the dataset's warning; here it is needed
            raise ValueError(f"parts file {parts_file}: image {n!r} cannot be read "
                             f"({paths[n]})")
        xs.append(item[0])
        h, w = decode_file(paths[n], None).shape[-2:]
        for p in wanted:
            try:
                m = fit(part_mask(boxes[n][p], int(h), int(w)))
            except ValueError as e:
                raise ValueError(f"parts file {parts_file}, {n!r}, part {p!r}: {e}") from None
            if past_image(boxes[n][p], int(h), int(w)):
                bounds = ", ".join(f"{v:g}" for v in region_bounds(boxes[n][p]))
                warnings.warn(PartCutWarning(
                    f"parts file {parts_file}, {n!r}, part {p!r}: it reaches past the image "
                    f"({bounds} on a {w}x{h} image, left, top, right, bottom): cut to it "
                    "(marked on another size of the image?)"), stacklevel=2)
            if not m.any():
                raise ValueError(
                    f"parts file {parts_file}, {n!r}: part {p!r} falls outside the "
                    f"centre {m.shape[-1]} px crop the model sees (the shorter side resized to "
                    f"{bundle.input_preprocessing.resize} first)")
            masks[p].append(m)
    return names, torch.stack(xs), {p: torch.stack(v) for p, v in masks.items()}


def probes(model: nn.Module, data: str, run_dir: str | Path, per_class: int = 20,
           n_test: int = 1000, *,
           preprocessing: Any = None, batch_size: int = 128, progress: bool = False,
           layers: Sequence[str] | None = None) -> list[ProbeRow]:
    """Table 7: linear probes per layer (`layers`, default
    `zfnet.analyses.probes.probe_layers`), trained on
    `per_class` training images per class of `data` (centre crops), tested on the first
    `n_test` val images. `preprocessing`: the model's (`load_dataset(..., preprocessing=)`),
    for a model that does not take the dataset's own inputs. `progress`: a bar over each
    split's batches (ImageNet's 20 a class: 20,000 images through the model)."""
    from zfnet.analyses.probes import linear_probes, probe_layers, probes_section
    from zfnet.progress import progress_bar

    if parse_spec(data).name == "images":
        raise ValueError(f"linear probes are trained on labelled images, and {data} has no "
                         "labels; give a labelled dataset: imagefolder:DIR (train/ and val/ "
                         "class folders), shards:DIR, fashion-mnist, synthetic")
    few = load_dataset(with_options(data, per_class=per_class), preprocessing=preprocessing)
    if len(few.train) == 0:  # a labelled test set alone (imagefolder:DIR with val/ only)
        raise ValueError(f"linear probes are trained on the training split, and {data} has "
                         "none (val/ alone); give a folder with train/ as well")
    per_class_words = _images_per_class(few.train, per_class)
    cfg = zfnet_config(model)
    named = data
    if cfg is not None and (few.in_channels, few.input_size) != (cfg.in_channels,
                                                                  cfg.input_size):
        from zfnet.analyses.transfer import adapt_bundle

        # Table 7's case: another dataset's features (Caltech's, ImageNet's model), its images
        # adapted to the model's input as `analyze transfer` adapts them
        few = adapt_bundle(few, cfg.in_channels, cfg.input_size)
        named = (f"{data} (its images adapted to the model's {cfg.in_channels}-channel "
                 f"{cfg.input_size} px input)")
    check_fits(model, few)
    test = _centre(few)
    test = Subset(test, range(min(n_test, len(test))))
    layers = list(dict.fromkeys(layers)) if layers else probe_layers(model, _size(few))

    def batches(data: Any, split: str) -> Any:
        return progress_bar(DataLoader(data, batch_size=batch_size, collate_fn=collate),
                            unit="batch", desc=f"{split} images' features", shown=progress,
                            position=0)

    rows = linear_probes(model, batches(_centre(few, "train"), "training"),
                         batches(test, "test"), layers)
    probes_section(run_dir, rows, per_class_words, named, len(test))
    return rows


def _images_per_class(train: Any, asked: int) -> str:
    """How many training images per class `per_class=asked` gave: `asked`, or the counts
    where classes hold fewer."""
    from collections import Counter

    targets = getattr(train, "targets", None)
    if not targets:
        return str(asked)
    counts = Counter(int(t) for t in targets).values()
    lo, hi = min(counts), max(counts)
    if lo == hi == asked:
        return str(asked)
    return (str(lo) if lo == hi else f"{lo}-{hi}") + f" (of {asked} asked: no more in the data)"


def transfer(model: nn.Module, meta: dict[str, Any], target: str, run_dir: str | Path,
             shots: tuple[int, ...] = (1, 5, 20), n_test: int = 1000,
             scratch_steps: int = 300, layer: str | None = None, batch_size: int = 32,
             device: str = "cpu", *, preprocessing: Any = None, name: str | None = None,
             on_row: Any = None, progress: bool = False) -> list[TransferRow]:
    """Tables 4–5: layers 1–7 (up to `layer`) of the model fixed + a new softmax on N images
    per class of `target`, against the same architecture from scratch. `meta`: a run's
    checkpoint meta (its model, options, input and data; the target as the paper's inputs,
    adapted to the run's), or with `preprocessing` any source's (`zfnet.sources.Source.meta`:
    its architecture from `source`; both arms on the target as that model's inputs).
    `layer` default: relu7 on zfnet's models, the input of another architecture's classifier
    (`zfnet.models.vector_layer`: a ResNet's avgpool). `name`: the model in the report.
    `on_row`: called with each N's row as it is done; `progress`: the from-scratch runs'
    progress bars."""
    from zfnet.analyses.transfer import transfer_section, transfer_study
    from zfnet.models import is_zfnet_model, vector_layer

    if preprocessing is None:
        size, channels = int(meta["input_size"]), int(meta["in_channels"])
        architecture, options = meta["model"], meta.get("model_opts") or {}
        trained = f"{meta['model']} trained on {meta['data']}"
    else:
        size, channels = preprocessing.crop, preprocessing.in_channels
        architecture = meta.get("model") or meta["source"]
        options = meta.get("model_opts") or {}
        trained = name or architecture
    if layer is None:
        layer = "relu7" if is_zfnet_model(model) else vector_layer(model, size)
    rows = transfer_study(model, target, shots, run_dir, model_name=architecture,
                          model_opts=options, n_test=n_test,
                          scratch_steps=scratch_steps, layer=layer, batch_size=batch_size,
                          device=device, in_channels=channels, input_size=size,
                          preprocessing=preprocessing, on_row=on_row,
                          progress=progress)
    transfer_section(run_dir, rows, trained, target, layer)
    return rows


RANDOMIZATION_IMAGES = 16  # `randomization`'s default: fewer make each step's mean noisy


def randomization(model: nn.Module, bundle: DataBundle, run_dir: str | Path,
                  n_images: int | None = None, layer: str | None = None,
                  mode: str = "cascading", steps: str = "block",
                  progress: Callable[[int, int], None] | None = None) -> RandomizationResult:
    """Sanity check (Adebayo et al.): cascading (or, `mode="independent"`, one at a time)
    randomisation of the blocks (`steps="module"`: the modules) below `layer` (None:
    `zfnet.models.last_spatial_layer`, conv5 on zfnet's models); seed units: each image's
    strongest map in `layer`; scores: the mean over `n_images` val images (default 16, or the
    split's all where it has fewer). progress: `model_randomization`'s."""
    from zfnet.activations import get_activations
    from zfnet.analyses.sanity import (
        MODES,
        STEPS,
        model_randomization,
        passed_through,
        randomization_section,
    )
    from zfnet.models import (
        eval_mode,
        feature_layers,
        is_zfnet_model,
        last_spatial_layer,
        layer_geometries,
        layer_info,
    )

    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not known; valid: {', '.join(MODES)}")
    if steps not in STEPS:
        raise ValueError(f"steps {steps!r} is not known; valid: {', '.join(STEPS)}")
    check_fits(model, bundle)
    size = _size(bundle)
    if layer is None:
        layer = last_spatial_layer(model, size)
    # unknown: UnknownLayerError listing the valid names
    if layer_geometries(model, [layer], size)[layer] is None:
        if is_zfnet_model(model):
            valid = ", ".join(n for n, i in layer_info(model).items() if i.geometry is not None)
        else:
            valid = "e.g. " + ", ".join(feature_layers(model, size))
        raise ValueError(f"layer {layer!r} has no feature maps to seed the check from; valid: "
                         f"{valid}")
    val = _centre(bundle)
    if n_images is None:
        n_images = min(RANDOMIZATION_IMAGES, len(val))
    if not 1 <= n_images <= len(val):
        raise ValueError(f"n_images={n_images}: {len(val)} image{'s' * (len(val) != 1)} to "
                         f"take from ({val_words(bundle)}); give 1 to {len(val)}")
    x = torch.stack([item[0] for _, item in pick_items(val, n_images)])  # readable ones
    with eval_mode(model):
        act = get_activations(model, x, [layer])[layer]  # (N, C, H, W)
    strength = act.flatten(2).amax(2)  # (N, C)
    # not a map the first step only passes through (a DenseNet block's concatenation)
    through = passed_through(model, x, layer, steps)
    if through.all():
        through[:] = False
    channels = strength.masked_fill(through, -torch.inf).argmax(1)  # (N,)
    res = model_randomization(model, x, layer, channels, mode=mode, steps=steps,
                              progress=progress)
    res.passed = int(through.sum())
    randomization_section(run_dir, res)
    return res


RANDOM_RUN = "random-labels"  # where `data_randomization` trains its copy, in `run_dir`
REFERENCE_RUN = "reference"  # and the reference, on the true labels with another seed
SCORED = 2000  # images of each split the two models' accuracies are measured on


def data_randomization(model: nn.Module, meta: dict[str, Any], run_dir: str | Path,
                       n_images: int = 4, epochs: int | None = None,
                       random_run: str | Path | None = None, reference: bool = False,
                       label_seed: int = 0, device: str = "auto"
                       ) -> tuple[DataRandomizationResult | None, dict[str, Any]]:
    """Adebayo et al.'s data randomisation test on a zfnet run (`model`, its checkpoint's
    `meta`): a copy trained with the run's configuration (`epochs`: instead of the run's, and
    of its time budget) on its data with the training labels permuted (`random_labels=`
    `label_seed`) into `random_run` (default `run_dir/random-labels`), then each model's
    predicted class projected for the first `n_images` training images (centre crops) and
    compared (`analyses.sanity`). With `reference`, a second copy, trained as the run was on
    the true labels but from the next seed (`run_dir/reference`), is compared the same way:
    how alike two runs' maps are anyway. A copy is continued where it is, as by `--resume`;
    copies train on `device` (auto: CUDA where there is one).

    Returns (the result, or None when a copy's training was interrupted by a signal; that
    copy's training summary, else the random copy's). Every input is checked before anything
    is written."""
    from dataclasses import replace

    from zfnet.analyses.sanity import data_randomization as compare
    from zfnet.analyses.sanity import data_randomization_section
    from zfnet.data.relabel import OPTION, with_random_labels
    from zfnet.train import TrainConfig, evaluate, load_model, train
    from zfnet.train.checkpoint import (
        has_checkpoint,
        read_meta,
        resolve_checkpoint,
        saved_preprocessing,
    )
    from zfnet.train.run import check_resumable

    if "train_config" not in meta:
        raise ValueError("the data randomisation test trains the model again: it needs a zfnet "
                         "run (--checkpoint RUN), whose configuration it repeats")
    saved = TrainConfig.from_dict(meta["train_config"])
    if OPTION in parse_spec(saved.data).options:
        raise ValueError(f"the run was trained on permuted labels already ({saved.data}); give "
                         "the run trained on the true labels")
    random_run = Path(random_run) if random_run is not None else Path(run_dir) / RANDOM_RUN
    copies = {"random": (replace(saved, data=with_options(saved.data, **{OPTION: label_seed}),
                                 out=str(random_run), resume=True, keep_epochs=(), device=device,
                                 epochs=epochs or saved.epochs,
                                 time_budget=None if epochs else saved.time_budget),
                         "another --random-run")}
    if reference:
        copies["reference"] = (replace(saved, out=str(Path(run_dir) / REFERENCE_RUN),
                                       resume=True, keep_epochs=(), device=device,
                                       seed=saved.seed + 1),
                               "another --out")
    for config, instead in copies.values():  # continued: only a copy made the same way
        if has_checkpoint(config.out):
            check_resumable(read_meta(resolve_checkpoint(config.out))["train_config"], config,
                            Path(config.out), action="continue", instead=instead)
    bundle = load_dataset(saved.data, preprocessing=saved_preprocessing(meta))
    check_fits(model, bundle, classes=True)
    train_split = _centre(bundle, "train")
    if not 1 <= n_images <= len(train_split):
        raise ValueError(f"n_images={n_images}: the training split of {bundle.spec!r} has "
                         f"{len(train_split)} images; give 1 to {len(train_split)}")
    # the copy's data: the run's, loaded once, its training labels permuted
    bundles = {"random": with_random_labels(bundle, label_seed, copies["random"][0].data),
               "reference": bundle}
    where = next(model.parameters()).device  # the model's: the copies are compared there
    trained, summaries = {}, {}
    for name, (config, _) in copies.items():
        summaries[name] = train(config, bundle=bundles[name])
        if summaries[name]["status"] != "completed":
            return None, summaries[name]
        trained[name], _ = load_model(config.out, meta["model"], device=where)

    def accuracy(net: nn.Module, data: Any) -> float:
        part = Subset(data, range(min(len(data), SCORED)))
        loader = DataLoader(part, batch_size=128, collate_fn=collate)
        return 1.0 - evaluate(net, loader, bundle.num_classes)["top1_error"]

    picks = pick_items(train_split, n_images)  # the first readable ones
    x = torch.stack([item[0] for _, item in picks]).to(where)
    pixels = torch.stack([train_split.raw(i) for i, _ in picks])
    result = compare(model, trained["random"], x)
    result.accuracy = {
        "train": accuracy(model, train_split),
        "random_train": accuracy(trained["random"], _centre(bundles["random"], "train")),
        "val": accuracy(model, _centre(bundle)),
        "random_val": accuracy(trained["random"], _centre(bundles["random"]))}
    if reference:
        result.reference = compare(model, trained["reference"], x).scores
        result.accuracy["reference_val"] = accuracy(trained["reference"], _centre(bundle))
    data_randomization_section(run_dir, result, pixels, str(random_run),
                               copies["reference"][0].out if reference else None)
    return result, summaries["random"]
