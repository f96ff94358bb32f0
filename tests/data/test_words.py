"""words=FILE: classes named by IDs (ImageNet's WNIDs) shown with their words wherever a person
reads them, from Kaggle's LOC_synset_mapping.txt or the ILSVRC2012 devkit, given or implied by
val_labels; the class names themselves stay the IDs."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.data.ilsvrc import write_devkit
from tests.data.test_labels_file import CLASSES, SPEC, _classed, _flat
from zfnet.cli import main
from zfnet.data import load_dataset
from zfnet.data.spec import absolute_spec
from zfnet.sources import load_source

MAPPING = ("n01440764 tench, Tinca tinca\n"
           "n01443537 goldfish, Carassius auratus\n"
           "n01484850 great white shark, white shark, man-eater\n"
           "n01491361 tiger shark, Galeocerdo cuvieri\n")  # Kaggle's: all 1000, ours 3
SHOWN = ["tench (n01440764)", "goldfish (n01443537)", "great white shark (n01484850)"]


@pytest.fixture(scope="module")
def classed(tmp_path_factory) -> Path:
    return _classed(tmp_path_factory.mktemp("words") / "classed")


def test_a_mapping_file_names_the_classes_as_shown_not_as_kept(classed, tmp_path) -> None:
    words = tmp_path / "LOC_synset_mapping.txt"
    words.write_text(MAPPING)
    plain = load_dataset(f"imagefolder:{classed}?{SPEC}")
    data = load_dataset(f"imagefolder:{classed}?{SPEC}&words={words}")
    assert data.class_names == plain.class_names == list(CLASSES)  # the IDs stay the names
    assert data.class_labels == SHOWN and plain.class_labels == list(CLASSES)
    assert data.val.targets == plain.val.targets
    # random labels keep the words; a class the file lacks keeps its name alone
    words.write_text(MAPPING.replace("n01443537 goldfish, Carassius auratus\n", ""))
    data = load_dataset(f"imagefolder:{classed}?{SPEC}&random_labels=1&words={words}")
    assert data.class_labels == [SHOWN[0], CLASSES[1], SHOWN[2]]
    # a run saves the spec: the words file's path is made absolute like val_labels'
    assert absolute_spec("imagefolder:d?words=w.txt").endswith(f"?words={Path.cwd()}/w.txt")


@pytest.mark.filterwarnings("ignore::zfnet.data.labels_file.MissingValImagesWarning")
def test_words_from_the_devkit_or_beside_kaggles_csv_without_asking(classed, tmp_path) -> None:
    truth = dict(_flat(classed, tmp_path / "flat"))
    words = dict(line.split(" ", 1) for line in MAPPING.splitlines()[:3])
    devkit = write_devkit(tmp_path, {w: k + 1 for k, w in enumerate(CLASSES)},
                          [CLASSES[truth.get(f"ILSVRC2012_val_{k:08d}.JPEG", 0)]
                           for k in range(1, 12)], words)
    archive = tmp_path / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(devkit, arcname=devkit.name)
    for kit in (devkit, archive):
        data = load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={kit}")
        assert data.class_labels == SHOWN
        given = load_dataset(f"imagefolder:{classed}?{SPEC}&words={kit}")  # given for a folder
        assert given.class_labels == SHOWN
    meta = devkit / "data" / "meta.mat"  # the devkit's meta.mat itself (it was read as text)
    assert load_dataset(f"imagefolder:{classed}?{SPEC}&words={meta}").class_labels == SHOWN
    from zfnet.data.shard_writer import write_shards  # and the shards written from there

    write_shards(f"imagefolder:{tmp_path / 'flat'}?val_labels={archive}", tmp_path / "sh",
                 resize=24)
    assert load_dataset(f"shards:{tmp_path / 'sh'}?{SPEC}").class_labels == SHOWN
    # Kaggle's layout: LOC_val_solution.csv with LOC_synset_mapping.txt beside it
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"{n.removesuffix('.JPEG')},{CLASSES[y]} 1 2 3 4\n" for n, y in truth.items()))
    assert load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={csv}"
                        ).class_labels == list(CLASSES)  # no mapping there yet
    (tmp_path / "LOC_synset_mapping.txt").write_text(MAPPING)
    assert load_dataset(f"imagefolder:{tmp_path / 'flat'}?{SPEC}&val_labels={csv}"
                        ).class_labels == SHOWN


@pytest.mark.parametrize(("spec", "message"), [
    ("imagefolder:{classed}?words={tmp}/none.txt", "words: .*none.txt does not exist"),
    ("imagefolder:{classed}?words={tmp}/other.txt", r"words: .*other.txt names none of the 3 "
     r"classes of .* \(n01440764, n01443537, n01484850 \.\.\.\); it names n09999999"),
    ("imagefolder:{classed}?words=", "words= is empty"),
    ("imagefolder:{classed}?words={tmp}", "words: .* is not the ILSVRC2012 devkit"),
    ("images:{classed}?words={tmp}/other.txt", "has no classes to name"),
], ids=["missing", "names-none", "empty", "folder-not-a-devkit", "no-classes"])
def test_bad_words_files_are_named(classed, tmp_path, spec, message) -> None:
    (tmp_path / "other.txt").write_text("n09999999 something\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_dataset(spec.format(classed=classed, tmp=tmp_path))


def test_eval_the_report_and_a_runs_classes_show_the_words(tmp_path) -> None:
    """A run trained with words=: `zfnet eval` prints and reports each class with its words
    (the JSON keeps the names), and the run as a source names its outputs so (the gallery's,
    occlusion's and the explorer's class names)."""
    words = tmp_path / "words.txt"
    words.write_text("face a human face\nhouse a house, home\n")
    run = tmp_path / "run"
    spec = f"synthetic?n_train=32&n_val=20&size=32&words={words}"
    res = CliRunner().invoke(main, ["train", "--data", spec, "--model", "zfnet_small",
                                    "--epochs", "1", "--batch-size", "16", "--out", str(run),
                                    "--quiet", "--no-tensorboard", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    words.rename(tmp_path / "moved.txt")  # the run keeps its classes as shown
    assert load_source(str(run)).labels[:3] == ["a human face (face)", "a house (house)", "car"]
    shutil.copy(tmp_path / "moved.txt", words)
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--out", str(run),
                                    "--json", str(tmp_path / "e.json"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any(line.startswith("  a human face (face) ") for line in lines), res.output
    assert any(line.startswith("  car ") for line in lines), res.output
    r = json.loads((tmp_path / "e.json").read_text())
    assert list(r["per_class_accuracy"])[:2] == ["face", "house"]
    assert r["class_labels"][:2] == ["a human face (face)", "a house (house)"]
    section = json.loads((run / "sections" / "evaluation.json").read_text())
    rows = section["tables"][0]["rows"]
    assert [row[0] for row in rows[:3]] == ["a human face (face)", "a house (house)", "car"]
    res = CliRunner().invoke(main, ["analyze", "occlusion", "--checkpoint", str(run),
                                    "--images", "2", "--size", "16", "--stride", "8",
                                    "--pointing", "0", "--out", str(run), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    table = json.loads((run / "sections" / "occlusion.json").read_text())["tables"][0]
    assert table["columns"][1] == "true class"
    assert [row[1] for row in table["rows"]] == ["a human face (face)", "a house (house)"]
    assert all(row[2] in load_source(str(run)).labels for row in table["rows"])  # predicted
    # a run trained before words= names its outputs by the dataset's own names: shown too
    from zfnet.analyses.occlusion import occlusion_report

    every = tmp_path / "every.txt"  # every class worded: each prediction is shown with words
    every.write_text("".join(f"{c} the {c}\n" for c in load_dataset(spec).class_names))
    source, bundle = load_source(str(run)), load_dataset(spec.replace(str(words), str(every)))
    occlusion_report(source.model, bundle, tmp_path / "old", n_images=2, n_pointing=0, size=16,
                     stride=8, class_names=list(bundle.class_names))
    table = json.loads((tmp_path / "old" / "sections" / "occlusion.json").read_text())["tables"][0]
    assert [row[1] for row in table["rows"]] == ["the face (face)", "the house (house)"]
    assert all(row[2] in bundle.class_labels for row in table["rows"]), table["rows"]
    # the explorer's top classes and the gallery's class units, for such a run
    from zfnet.data.words import as_shown
    from zfnet.explorer.session import Explorer

    source.labels = list(bundle.class_names)  # as a checkpoint of before words= names them
    e = Explorer(source, bundle, cache_dir=tmp_path / "cache")
    assert all(t["name"] in bundle.class_labels for t in e.predict("val:0")["top"])
    assert e.predict("val:0")["label"] == "the face (face)"
    assert as_shown(source.labels, bundle) == bundle.class_labels
    assert as_shown(["tench", "goldfish"], bundle) == ["tench", "goldfish"]  # a model's own
    assert as_shown(None, bundle) is None
    # a model's --labels of 1000 WNIDs on some of the classes (classes=): those with words
    assert as_shown(["zzz", bundle.class_names[1], "yyy"], bundle) == \
        ["zzz", bundle.class_labels[1], "yyy"]


def test_shards_keep_the_words_of_the_folder_they_are_written_from(classed, tmp_path) -> None:
    """`zfnet shards` keeps the classes' words in the manifest (from words= or implied by
    val_labels), so shards:OUT shows what imagefolder:DIR showed; a bad words file is refused
    before anything is written."""
    from zfnet.data.shard_writer import write_shards
    from zfnet.data.shards import read_manifest

    words = tmp_path / "LOC_synset_mapping.txt"
    words.write_text(MAPPING)
    write_shards(f"imagefolder:{classed}?words={words}", tmp_path / "sh", resize=24)
    assert read_manifest(tmp_path / "sh")["class_words"][0] == "tench, Tinca tinca"
    data = load_dataset(f"shards:{tmp_path / 'sh'}?{SPEC}")
    assert data.class_names == list(CLASSES) and data.class_labels == SHOWN
    assert load_dataset(f"shards:{tmp_path / 'sh'}?{SPEC}&classes=2,0").class_labels == [
        SHOWN[2], SHOWN[0]]
    (tmp_path / "mine.txt").write_text("n01440764 my tench\n")
    assert load_dataset(f"shards:{tmp_path / 'sh'}?{SPEC}&words={tmp_path / 'mine.txt'}"
                        ).class_labels[:2] == ["my tench (n01440764)", CLASSES[1]]
    write_shards(f"imagefolder:{classed}", tmp_path / "plain", resize=24)  # none to keep
    assert "class_words" not in read_manifest(tmp_path / "plain")
    assert load_dataset(f"shards:{tmp_path / 'plain'}?{SPEC}").class_labels == list(CLASSES)
    (tmp_path / "other.txt").write_text("n09999999 something\n")
    with pytest.raises(ValueError, match="names none of the 3 classes"):
        write_shards(f"imagefolder:{classed}?words={tmp_path / 'other.txt'}", tmp_path / "no",
                     resize=24)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".no", "no"))]


def test_json_words_keras_class_index_or_an_object_of_a_class_to_its_words(classed, tmp_path
                                                                           ) -> None:
    """Keras's (and PyTorch's tutorials') imagenet_class_index.json, or {class: words}; a JSON
    file of any other shape, or not JSON, is named."""
    keras = {str(k): [w, t.split(",")[0]] for k, (w, t) in
             enumerate(line.split(" ", 1) for line in MAPPING.splitlines())}
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(keras))
    (tmp_path / "words.json").write_text(json.dumps(
        {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in MAPPING.splitlines()}))
    for f in ("imagenet_class_index.json", "words.json"):
        data = load_dataset(f"imagefolder:{classed}?{SPEC}&words={tmp_path / f}")
        assert data.class_labels == SHOWN and data.class_names == list(CLASSES), f
    for text, message in (('["tench"]', "is not a JSON object of an index to a class and its "
                                        "words"),
                          ('{"0": ["n01440764", "tench", "x"]}', r"is not .*, "
                                                                 "imagenet_class_index.json"),
                          ('{"0": ["n01440764"', "is not valid JSON")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match=f"words: .*bad.json {message}"):
            load_dataset(f"imagefolder:{classed}?{SPEC}&words={tmp_path / 'bad.json'}")


def test_a_mapping_file_separated_by_tabs_is_read_as_by_spaces(tmp_path) -> None:
    from zfnet.data.words import read_words

    words = tmp_path / "words.txt"  # a spreadsheet's export: a tab between a class and its words
    words.write_text("n01440764\ttench, Tinca tinca\r\n\r\nn01443537\t goldfish\n")
    assert read_words(words) == {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish"}


def test_a_mapping_file_not_in_utf8_names_its_line(tmp_path) -> None:
    from zfnet.data.words import read_words

    words = tmp_path / "words.txt"  # saved as Windows-1252 by an editor
    words.write_bytes("n01440764 tench\r\nn01443537 poisson rouge, carassin doré\r\n"
                      .encode("cp1252"))
    with pytest.raises(ValueError, match=r"words\.txt is not UTF-8 text \(line 2: byte 0xe9\); "
                                         "save it as UTF-8"):
        read_words(words)


def test_kaggles_labels_csv_given_as_words_names_the_mapping_beside_it(classed, tmp_path) -> None:
    (tmp_path / "LOC_synset_mapping.txt").write_text(MAPPING)
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    with pytest.raises(ValueError, match=r"names none of the 3 classes .* the words are in "
                                         rf"{tmp_path}/LOC_synset_mapping\.txt$"):
        load_dataset(f"imagefolder:{classed}?{SPEC}&words={solution}")
