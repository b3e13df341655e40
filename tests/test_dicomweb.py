"""``idcfs serve --dicomweb``: QIDO-RS and WADO-RS through a real server, asked by dicomweb-client
(the Python DICOMweb client) and by plain HTTP where a client hides what was sent: searches
answered from the catalog (checked against the bundled index read on its own, with no request to
the store), series and studies retrieved as their stored bytes, refusals (405, 406, 400, 404),
CORS for named origins only, and the share's authentication in front of it all."""

from __future__ import annotations

import email.parser
import email.policy
import http.client
import json
import threading
from collections.abc import Iterator

import duckdb
import idc_index_data
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from tests.conftest import source_file
from tests.test_webdav import Share, no_file_left_open, start_serve, stop_serve

ORIGIN = "http://viewer.example:3000"


@pytest.fixture(scope="module")
def served_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("dicomweb")


@pytest.fixture(scope="module")
def served(generated, slide, s3_proxy, served_folder) -> Iterator[Share]:
    collections = sorted({s.collection_id for s in generated if s.modality != "SM"} | {slide.collection_id})
    share = start_serve(
        served_folder,
        s3_proxy.url,
        "--dicomweb",
        "--cors-origin",
        ORIGIN,
        *(f"--collection={c}" for c in collections),
    )
    yield share
    stop_serve(share)


@pytest.fixture(scope="module")
def client(served) -> DICOMwebClient:
    return DICOMwebClient(url=f"{served.url}/dicomweb")


def image_series(generated):
    return [s for s in generated if s.modality != "SM" and s.files]


def indexed(sql: str) -> list[tuple]:
    """The bundled index, asked on its own (not through idcfs's catalog)."""
    return duckdb.sql(sql.replace("INDEX", f"read_parquet('{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}')")).fetchall()


def value(result: dict, tag: str):
    values = result.get(tag, {}).get("Value")
    return None if values is None else (values[0] if len(values) == 1 else values)


def test_a_study_search_over_the_served_collections_makes_no_request(served, client, generated, slide, s3_proxy):
    collections = sorted({s.collection_id for s in generated if s.modality != "SM"} | {slide.collection_id})
    listed = ", ".join(f"'{c}'" for c in collections)
    expected = {
        uid for (uid,) in indexed(f"SELECT DISTINCT StudyInstanceUID FROM INDEX WHERE collection_id IN ({listed})")
    }
    before = len(s3_proxy.log.requests)
    found = client.search_for_studies(limit=10_000)
    assert len(s3_proxy.log.requests) == before  # the catalog answers: no LIST, no GET
    assert {value(r, "0020000D") for r in found} == expected
    series = image_series(generated)[0]
    (study,) = [r for r in found if value(r, "0020000D") == series.study_uid]
    ((modalities, count, date, patient),) = indexed(
        f"SELECT list(DISTINCT Modality ORDER BY Modality), count(*), any_value(StudyDate), any_value(PatientID) "
        f"FROM INDEX WHERE StudyInstanceUID = '{series.study_uid}'"
    )
    assert value(study, "00100020") == patient
    assert value(study, "00201206") == count  # NumberOfStudyRelatedSeries
    shown = value(study, "00080061")
    assert (shown if isinstance(shown, list) else [shown]) == modalities
    assert value(study, "00080020") == date.replace("-", "")
    # RetrieveURLs lead back here: from the request's Host, with the port this server was reached
    # on when the client named none (dicomweb-client sends "Host: 127.0.0.1"), ...
    assert value(study, "00081190") == f"{served.url}/dicomweb/studies/{series.study_uid}"
    status, _, body = served.request("GET", f"/dicomweb/studies?StudyInstanceUID={series.study_uid}")
    assert value(json.loads(body)[0], "00081190") == f"{served.url}/dicomweb/studies/{series.study_uid}"
    # ... and as a reverse proxy names itself (its Host, port or none, when it says it forwards)
    forwarded = {"Host": "pacs.example.org", "X-Forwarded-For": "10.0.0.7"}
    status, _, body = served.request("GET", f"/dicomweb/studies?StudyInstanceUID={series.study_uid}", forwarded)
    assert value(json.loads(body)[0], "00081190") == f"http://pacs.example.org/dicomweb/studies/{series.study_uid}"
    # ... with the scheme it says the client used (an https proxy in front: no mixed content)
    forwarded = {"Host": "pacs.example.org", "X-Forwarded-Proto": "https"}
    status, _, body = served.request("GET", f"/dicomweb/studies?StudyInstanceUID={series.study_uid}", forwarded)
    assert value(json.loads(body)[0], "00081190") == f"https://pacs.example.org/dicomweb/studies/{series.study_uid}"


def test_searches_match_as_viewers_ask(client, generated):
    series = image_series(generated)[0]
    by_patient = client.search_for_studies(search_filters={"PatientID": series.patient_id})
    assert series.study_uid in {value(r, "0020000D") for r in by_patient}
    assert all(value(r, "00100020") == series.patient_id for r in by_patient)
    wildcard = client.search_for_studies(search_filters={"PatientID": series.patient_id[:-1] + "?"})
    assert series.study_uid in {value(r, "0020000D") for r in wildcard}
    ((date,),) = indexed(f"SELECT any_value(StudyDate) FROM INDEX WHERE StudyInstanceUID = '{series.study_uid}'")
    day = date.replace("-", "")
    in_range = client.search_for_studies(search_filters={"StudyDate": f"{day}-{day}", "PatientID": series.patient_id})
    assert series.study_uid in {value(r, "0020000D") for r in in_range}
    before = client.search_for_studies(search_filters={"StudyDate": "-19000101", "PatientID": series.patient_id})
    assert before == []
    by_modality = client.search_for_studies(
        search_filters={"ModalitiesInStudy": series.modality, "PatientID": series.patient_id}
    )
    assert series.study_uid in {value(r, "0020000D") for r in by_modality}
    listed = client.search_for_studies(search_filters={"StudyInstanceUID": f"1.2.3,{series.study_uid}"})
    assert [value(r, "0020000D") for r in listed] == [series.study_uid]
    with_age = client.search_for_studies(search_filters={"StudyInstanceUID": series.study_uid}, fields=["PatientAge"])
    assert "00101010" in with_age[0] and "00101010" not in listed[0]


def test_studies_are_paged(client):
    everything = [value(r, "0020000D") for r in client.search_for_studies(limit=10_000)]
    assert len(everything) > 3
    pages = [value(r, "0020000D") for r in client.search_for_studies(limit=2, offset=1)]
    assert pages == everything[1:3]


def test_the_series_of_a_study_and_of_the_whole_selection(client, generated):
    series = image_series(generated)[0]
    found = client.search_for_series(series.study_uid)
    expected = indexed(
        f"SELECT SeriesInstanceUID, Modality, instanceCount FROM INDEX WHERE StudyInstanceUID = '{series.study_uid}'"
    )
    assert {(value(r, "0020000E"), value(r, "00080060"), value(r, "00201209")) for r in found} == set(expected)
    alone = client.search_for_series(search_filters={"SeriesInstanceUID": series.series_uid})
    assert [value(r, "0020000D") for r in alone] == [series.study_uid]  # a series search tells its study
    assert client.search_for_series("1.2.3.4") == []


def test_a_series_retrieved_is_its_stored_files(served, client, generated):
    series = image_series(generated)[0]
    datasets = client.retrieve_series(series.study_uid, series.series_uid)
    expected = {pydicom.dcmread(source_file(series, f.name)).SOPInstanceUID for f in series.files}
    assert {ds.SOPInstanceUID for ds in datasets} == expected
    status, headers, parts = _multipart(served, f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}")
    assert status == 200 and headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    stored = sorted(source_file(series, f.name).read_bytes() for f in series.files)
    assert sorted(parts) == stored  # byte for byte, as stored


def test_a_study_retrieved_holds_every_series_of_it_with_files(served, generated):
    series = image_series(generated)[0]
    status, _, parts = _multipart(served, f"/dicomweb/studies/{series.study_uid}")
    in_study = [s for s in generated if s.study_uid == series.study_uid]
    assert status == 200
    assert sorted(parts) == sorted(source_file(s, f.name).read_bytes() for s in in_study for f in s.files)


def test_what_cannot_be_answered_is_refused_with_its_reason(served, generated):
    series = image_series(generated)[0]
    path = f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}"
    status, headers, _ = served.request("POST", "/dicomweb/studies", {"Content-Type": "application/dicom"}, b"x")
    assert status == 405 and "GET" in headers["Allow"]
    assert served.request("DELETE", path)[0] == 405
    other = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80'
    status, _, body = served.request("GET", path, {"Accept": other})
    assert status == 406 and b"transcode" in body
    assert served.request("GET", "/dicomweb/studies?NotAnAttribute=1")[0] == 400
    assert served.request("GET", "/dicomweb/studies?StudyDate=2001")[0] == 400
    assert served.request("GET", "/dicomweb/studies?limit=0")[0] == 400
    assert served.request("GET", "/dicomweb/studies/1.2.3")[0] == 404
    assert served.request("GET", f"/dicomweb/studies/{series.study_uid}/series/1.2.3")[0] == 404
    assert served.request("GET", "/dicomweb/nothing")[0] == 404
    status, headers, _ = served.request("GET", "/dicomweb/studies?AccessionNumber=123")
    assert status == 200 and "not in IDC's index" in headers["Warning"]


def test_cors_only_for_named_origins(served):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "accept"}
    status, headers, _ = served.request("OPTIONS", "/dicomweb/studies", preflight)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN and headers["Access-Control-Allow-Credentials"] == "true"
    assert "GET" in headers["Access-Control-Allow-Methods"]
    status, headers, _ = served.request("GET", "/dicomweb/studies?limit=1", {"Origin": ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, _ = served.request("GET", "/dicomweb/studies?limit=1", {"Origin": "http://elsewhere.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers
    assert (
        served.request("OPTIONS", "/dicomweb/studies", {**preflight, "Origin": "http://elsewhere.example"})[1].get(
            "Access-Control-Allow-Origin"
        )
        is None
    )


def test_the_share_still_serves_its_tree_beside_dicomweb(served, generated):
    series = image_series(generated)[0]
    name = series.files[0].name
    status, _, body = served.request("GET", "/" + series.path + "/" + name)
    assert status == 200 and body == source_file(series, name).read_bytes()


def test_dicomweb_asks_for_the_shares_password(s3_proxy, generated, tmp_path):
    series = image_series(generated)[0]
    users = tmp_path / "users.txt"
    users.write_text("ann:secret\n")
    share = start_serve(
        tmp_path, s3_proxy.url, "--dicomweb", "--auth", str(users), f"--collection={series.collection_id}"
    )
    try:
        assert share.request("GET", "/dicomweb/studies")[0] == 401
        import base64

        token = base64.b64encode(b"ann:secret").decode()
        status, _, body = share.request("GET", "/dicomweb/studies?limit=1", {"Authorization": f"Basic {token}"})
        assert status == 200 and body.startswith(b"[")
    finally:
        stop_serve(share)


def _multipart(served: Share, path: str) -> tuple[int, dict[str, str], list[bytes]]:
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    try:
        connection.request("GET", path, headers={"Accept": 'multipart/related; type="application/dicom"'})
        response = connection.getresponse()
        body = response.read()
        headers = dict(response.getheaders())
    finally:
        connection.close()
    if response.status != 200:
        return response.status, headers, []
    assert int(headers["Content-Length"]) == len(body)
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + body
    )
    return response.status, headers, [part.get_payload(decode=True) for part in message.iter_parts()]


# -- the instance level: headers read once (idcfs/dicom) ---------------------------------------


def _local(series):
    return {
        pydicom.dcmread(source_file(series, f.name)).SOPInstanceUID: source_file(series, f.name) for f in series.files
    }


def test_the_instances_of_a_series(client, generated):
    series = image_series(generated)[0]
    local = _local(series)
    found = client.search_for_instances(series.study_uid, series.series_uid)
    assert {value(r, "00080018") for r in found} == set(local)
    some = next(iter(local))
    (one,) = client.search_for_instances(series.study_uid, series.series_uid, search_filters={"SOPInstanceUID": some})
    ds = pydicom.dcmread(local[some], stop_before_pixels=True)
    assert value(one, "00200013") == int(ds.InstanceNumber) and value(one, "00280010") == ds.Rows
    assert value(one, "00080016") == ds.SOPClassUID and value(one, "0020000E") == series.series_uid


def test_series_metadata_is_each_header_as_dicom_json(served, client, generated):
    series = image_series(generated)[0]
    local = _local(series)
    metadata = client.retrieve_series_metadata(series.study_uid, series.series_uid)
    assert {m["00080018"]["Value"][0] for m in metadata} == set(local)
    for item in metadata:
        ds = pydicom.dcmread(local[item["00080018"]["Value"][0]], stop_before_pixels=True)
        expected = ds.to_json_dict(1024, lambda element: "bulk")
        assert {tag: v for tag, v in item.items() if tag != "00020010" and "BulkDataURI" not in v} == {
            tag: v for tag, v in expected.items() if "BulkDataURI" not in v
        }
    study = client.retrieve_study_metadata(series.study_uid)
    assert set(local) <= {m["00080018"]["Value"][0] for m in study}
    status, headers, body = served.request("HEAD", f"/dicomweb/studies/{series.study_uid}/metadata")
    assert status == 200 and headers["Content-Type"] == "application/dicom+json" and body == b""
    some = next(iter(local))
    alone = client.retrieve_instance_metadata(series.study_uid, series.series_uid, some)
    assert alone["00080018"]["Value"] == [some]


def test_bulk_data_uris_give_the_values_they_stand_for(served, client, slide):
    """Each BulkDataURI of the metadata, asked for by dicomweb-client (multipart, its default)
    and by a plain request for the bare bytes, is the value the file holds."""
    local = _local(slide)
    metadata = client.retrieve_series_metadata(slide.study_uid, slide.series_uid)
    asked = 0
    for item in metadata:
        ds = pydicom.dcmread(local[item["00080018"]["Value"][0]], stop_before_pixels=True)
        for uri, expected in _bulk_values(item, ds):
            assert client.retrieve_bulkdata(uri) == [expected]
            for accept in ("application/octet-stream", "*/*"):  # OHIF's single-part mode sends no Accept
                status, headers, body = served.request("GET", uri[len(served.url) :], {"Accept": accept})
                assert status == 200 and headers["Content-Type"] == "application/octet-stream" and body == expected
            asked += 1
    assert asked == len(metadata)  # each level's ICC profile, in its optical path's item
    status, _, _ = served.request("GET", uri[len(served.url) :], {"Accept": "image/png"})
    assert status == 406


def _bulk_values(item: dict, ds: pydicom.Dataset) -> Iterator[tuple[str, bytes]]:
    """Each BulkDataURI in a DICOM JSON item, nested ones too, with the value the file holds."""
    for tag, element in item.items():
        if "BulkDataURI" in element:
            yield element["BulkDataURI"], ds[int(tag, 16)].value
        elif element.get("vr") == "SQ":
            for json_item, dataset in zip(element.get("Value", []), ds[int(tag, 16)].value, strict=True):
                yield from _bulk_values(json_item, dataset)


def test_an_instance_is_retrieved_as_stored(served, client, generated):
    series = image_series(generated)[0]
    sop, path = next(iter(_local(series).items()))
    ds = client.retrieve_instance(series.study_uid, series.series_uid, sop)
    assert ds.SOPInstanceUID == sop
    status, _, parts = _multipart(
        served, f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}/instances/{sop}"
    )
    assert status == 200 and parts == [path.read_bytes()]
    instance = f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}/instances/{sop}"
    assert served.request("HEAD", instance)[0] == 200
    assert no_file_left_open(served), "a DICOMweb answer left a file open"


def test_frames_are_cut_out_of_the_stored_bytes(served, client, generated, slide):
    series = image_series(generated)[0]
    sop, path = next(iter(_local(series).items()))
    (frame,) = client.retrieve_instance_frames(series.study_uid, series.series_uid, sop, frame_numbers=[1])
    assert frame == pydicom.dcmread(path).PixelData  # native: the raw frame
    level = max(
        _local(slide).items(), key=lambda item: pydicom.dcmread(item[1], stop_before_pixels=True).NumberOfFrames
    )
    ds = pydicom.dcmread(level[1])
    stored = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    wanted = [1, 2, len(stored)]
    got = client.retrieve_instance_frames(slide.study_uid, slide.series_uid, level[0], frame_numbers=wanted)
    assert got == [stored[n - 1] for n in wanted]  # encapsulated: the JPEG as stored
    frames_path = f"/dicomweb/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{level[0]}/frames"
    status, headers, _ = served.request("GET", f"{frames_path}/1", {"Accept": 'multipart/related; type="image/jpeg"'})
    assert status == 200 and 'type="image/jpeg"' in headers["Content-Type"]
    assert served.request("GET", f"{frames_path}/{len(stored) + 1}")[0] == 404
    assert served.request("GET", f"{frames_path}/0")[0] == 400
    png = {"Accept": 'multipart/related; type="image/png"'}
    assert served.request("GET", f"{frames_path}/1", png)[0] == 406  # no transcoding
    assert served.request("HEAD", f"{frames_path}/1")[0] == 200
    assert no_file_left_open(served), "a DICOMweb answer left a file open"


def test_frames_are_rendered_as_jpeg_or_png(served, client, generated, slide):
    """A CT slice through its rescale and a window (PS3.3's linear function, computed here from
    the stored pixels); a slide's JPEG tile as decoded; a viewport, JPEG by default, refusals."""
    import io

    import numpy as np
    from PIL import Image

    series = image_series(generated)[0]
    sop, path = next(iter(_local(series).items()))
    stored = pydicom.dcmread(path)
    hu = stored.pixel_array.astype(float) * float(stored.RescaleSlope) + float(stored.RescaleIntercept)
    png = client.retrieve_instance_rendered(
        series.study_uid, series.series_uid, sop, media_types=("image/png",), params={"window": "40,400"}
    )
    expected = np.rint(np.clip(((hu - 39.5) / 399 + 0.5) * 255, 0, 255)).astype(np.uint8)
    shown = np.asarray(Image.open(io.BytesIO(png)))
    assert shown.shape == (stored.Rows, stored.Columns) and np.array_equal(shown, expected)
    jpeg = client.retrieve_instance_rendered(series.study_uid, series.series_uid, sop)  # its own range
    assert Image.open(io.BytesIO(jpeg)).format == "JPEG"

    level = max(
        _local(slide).items(), key=lambda item: pydicom.dcmread(item[1], stop_before_pixels=True).NumberOfFrames
    )
    ds = pydicom.dcmread(level[1])
    tile = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    rendered = client.retrieve_instance_frames_rendered(
        slide.study_uid, slide.series_uid, level[0], frame_numbers=[1], media_types=("image/png",)
    )
    decoded = np.asarray(Image.open(io.BytesIO(rendered)))
    assert decoded.shape == (ds.Rows, ds.Columns, 3)
    assert np.abs(decoded.astype(int) - np.asarray(Image.open(io.BytesIO(tile)).convert("RGB")).astype(int)).max() <= 2
    frames_path = f"/dicomweb/studies/{slide.study_uid}/series/{slide.series_uid}/instances/{level[0]}/frames"
    status, headers, small = served.request("GET", f"{frames_path}/2/rendered?viewport=64,64")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(small)).size) == 64
    assert served.request("GET", f"{frames_path}/1/rendered", {"Accept": "image/gif"})[0] == 406
    assert served.request("GET", f"{frames_path}/1,2/rendered")[0] == 400
    assert served.request("GET", f"{frames_path}/1/rendered?window=1,2,sigmoid")[0] == 400
    assert served.request("GET", f"{frames_path}/1/rendered?quality=0")[0] == 400
    assert served.request("GET", f"{frames_path}/{int(ds.NumberOfFrames) + 1}/rendered")[0] == 404
    assert no_file_left_open(served), "a rendering left a file open"


def test_headers_are_read_once_and_kept_for_the_next_process(s3_proxy, generated, tmp_path):
    """A series' headers come from the cache folder once read: a new server, with every cached
    block gone, answers its metadata and instance search with no request to the store."""
    import shutil

    series = next(s for s in generated if s.modality in ("CT", "MR") and len(s.files) > 1)
    path = f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}/metadata"
    share = start_serve(tmp_path, s3_proxy.url, "--dicomweb", f"--collection={series.collection_id}")
    try:
        s3_proxy.log.clear()
        status, _, first = share.request("GET", path)
        assert status == 200
        # a block of each small object, not the objects whole (the LIST's few KB besides)
        assert s3_proxy.log.count("GET") == len(series.files) + 1
        assert s3_proxy.log.body_bytes <= len(series.files) * (64 << 10) + (64 << 10)
        assert sum(f.size for f in series.files) > len(series.files) * (64 << 10) + (64 << 10)
    finally:
        stop_serve(share)
    shutil.rmtree(tmp_path / "cache" / "blocks")
    share = start_serve(tmp_path, s3_proxy.url, "--dicomweb", f"--collection={series.collection_id}")
    try:
        before = len(s3_proxy.log.requests)
        status, _, again = share.request("GET", path)
        assert status == 200 and again == first
        instances = share.request("GET", path.replace("/metadata", "/instances"))
        assert instances[0] == 200 and len(json.loads(instances[2])) == len(series.files)
        assert len(s3_proxy.log.requests) == before
    finally:
        stop_serve(share)


def test_a_series_metadata_is_sent_as_its_headers_are_read(s3_proxy, generated, tmp_path):
    """The first instances' metadata reach the client while the last object's header is still
    being fetched (a viewer, or a series of tens of thousands, is not kept waiting for all)."""
    series = next(s for s in generated if s.modality in ("CT", "MR") and len(s.files) > 2)
    last = max(f.name for f in series.files)  # the listing's order: the last header written
    first_bytes = threading.Event()
    held: list[bool] = []

    def hold_the_last(method, path):
        if method == "GET" and last in path and not held:
            held.append(first_bytes.wait(30))
        return None  # then forwarded

    share = start_serve(tmp_path, s3_proxy.url, "--dicomweb", f"--collection={series.collection_id}")
    connection = http.client.HTTPConnection("127.0.0.1", share.port, timeout=60)
    s3_proxy.fault = hold_the_last
    try:
        connection.request("GET", f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}/metadata")
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
        body = response.read1(65536)  # the first piece, sent while the last header is held
        first_bytes.set()
        body += response.read()
    finally:
        s3_proxy.fault = None
        connection.close()
        stop_serve(share)
    assert held == [True]
    assert {m["00080018"]["Value"][0] for m in json.loads(body)} == set(_local(series))


def test_a_store_failing_midway_cuts_the_answer_and_is_not_remembered(s3_proxy, generated, tmp_path):
    """Past its status, a streamed answer the store fails cannot turn into an error: it is cut
    (the client sees it broken, never whole but short), the log says why in a line, and the next
    request, the store back, answers whole."""
    series = next(s for s in generated if s.modality in ("CT", "MR") and len(s.files) > 2)
    last = max(f.name for f in series.files)
    path = f"/dicomweb/studies/{series.study_uid}/series/{series.series_uid}/metadata"
    share = start_serve(
        tmp_path, s3_proxy.url, "--dicomweb", "--retry-deadline", "2", f"--collection={series.collection_id}"
    )
    s3_proxy.fault = lambda method, target: 503 if method == "GET" and last in target else None
    try:
        connection = http.client.HTTPConnection("127.0.0.1", share.port, timeout=60)
        connection.request("GET", path)
        response = connection.getresponse()
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        connection.close()
        s3_proxy.fault = None
        status, _, body = share.request("GET", path)
        assert status == 200 and len(json.loads(body)) == len(series.files)
    finally:
        s3_proxy.fault = None
        stop_serve(share)
    log = (tmp_path / "serve.out").read_text()
    assert "answer cut short" in log and "Traceback" not in log


@pytest.mark.filterwarnings("ignore:No bulk data URI handler")  # wsidicom leaves the ICC profile out
def test_wsidicom_opens_a_slide_over_dicomweb_as_from_its_files(client, slide):
    """wsidicom (the slide library Slim's users script with) reads the same regions over
    DICOMweb as from the local files: series metadata, instance search, frames."""
    from wsidicom import WsiDicom, WsiDicomWebClient

    folder = source_file(slide, slide.files[0].name).parent
    with (
        WsiDicom.open(folder) as local,
        WsiDicom.open_web(WsiDicomWebClient(client), slide.study_uid, slide.series_uid) as web,
    ):
        assert len(web.levels) == len(local.levels)
        for level in range(len(local.levels)):
            size = local.levels[level].size
            for x, y in ((0, 0), (size.width // 3, size.height // 2)):
                assert (
                    web.read_region((x, y), level, (200, 150)).tobytes()
                    == local.read_region((x, y), level, (200, 150)).tobytes()
                )
