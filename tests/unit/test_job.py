"""Job specs, SAGECal-MPI input checks, threads per rank, staging and gathering (the pure parts, and
the shell run by a real bash; the functional tests run them on a real cluster)."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest

from astrostack.errors import InvalidInput
from astrostack.job import (
    DEFAULT_SAGECAL_PARAMS,
    PAPER_SAGECAL_PARAMS,
    RANK_WRAPPER,
    ShareInputs,
    _gather_solutions_script,
    _regular_members,
    _stage_script,
    assign_ms,
    check_sagecal_inputs,
    choose_threads,
    host_shares,
    job_from_dict,
    parse_share_inputs,
    rank_hosts,
    resolve_upload,
    run_params,
    swarm_task_hosts,
)
from astrostack.spec import spec_from_dict

SWARM_HOSTFILE = [f"10.0.9.{i} slots=1" for i in range(2, 14)]  # master + 11 workers


def test_every_worker_gets_a_distinct_nonempty_subset():
    ms = [f"/share/data/obs{i}.MS" for i in range(25)]
    assignment = assign_ms(SWARM_HOSTFILE, ms, workers=11)
    assert list(assignment) == [line.split()[0] for line in SWARM_HOSTFILE[1:12]]
    flat = [m for files in assignment.values() for m in files]
    assert sorted(flat) == sorted(ms) and len(flat) == len(set(flat))
    assert all(assignment.values())
    sizes = [len(files) for files in assignment.values()]
    assert max(sizes) - min(sizes) <= 1


def test_master_gets_no_ms():
    assignment = assign_ms(SWARM_HOSTFILE, ["a.MS", "b.MS", "c.MS"], workers=3)
    assert SWARM_HOSTFILE[0].split()[0] not in assignment


def test_more_workers_than_ms_is_refused():
    with pytest.raises(InvalidInput, match="5 workers but only 4 MS"):
        assign_ms(SWARM_HOSTFILE, ["a", "b", "c", "d"], workers=5)


def test_more_workers_than_ranks_is_refused():
    with pytest.raises(InvalidInput, match="12 workers but the cluster has 11"):
        assign_ms(SWARM_HOSTFILE, [f"{i}.MS" for i in range(20)], workers=12)


def sagecal_split(ms: int, workers: int) -> list[int]:
    """What sagecal-mpi 0.8.5's master (sagecal_master.cpp) gives a host's workers: blocks of ceil(ms / workers)."""
    block, given, shares = -(-ms // workers), 0, []
    for _ in range(workers):
        shares.append(min(block, ms - given))
        given += shares[-1]
    return shares


def test_mpi_mode_assigns_per_host_container():
    # mpi mode: one container per host, so one hostname per host; rank 0 (master) and
    # rank 1 on 10.1.0.3, ranks 2 and 3 on 10.1.0.4. sagecal-mpi globs once per
    # hostname and splits that host's MS among its workers itself.
    hostfile = ["10.1.0.3 slots=2", "10.1.0.4 slots=2"]
    assignment = assign_ms(hostfile, ["a", "b", "c", "d"], workers=3)
    assert assignment == {"10.1.0.3": ["a"], "10.1.0.4": ["b", "c", "d"]}
    assert sagecal_split(1, 1) == [1] and sagecal_split(3, 2) == [2, 1]


def test_mpi_mode_leaves_no_worker_of_a_host_idle():
    # 1 worker on the first host, 3 on the second: dealing 4 MS round-robin (2 and 2)
    # would give the second host's workers 1, 1 and 0, and sagecal-mpi would wait forever.
    hostfile = ["10.1.0.3 slots=2", "10.1.0.4 slots=3"]
    assignment = assign_ms(hostfile, [f"{i}.MS" for i in range(4)], workers=4)
    assert [len(files) for files in assignment.values()] == [1, 3]
    for address, workers in (("10.1.0.3", 1), ("10.1.0.4", 3)):
        assert 0 not in sagecal_split(len(assignment[address]), workers)


@pytest.mark.parametrize("workers_per_host, total", [([3, 3, 3], 9), ([3, 3, 3], 11), ([4, 4, 3], 23),
                                                      ([2, 4], 7), ([1, 3], 4), ([5], 9)])
def test_host_shares_sum_up_and_idle_no_worker(workers_per_host, total):
    shares = host_shares(workers_per_host, total)
    assert shares is not None and sum(shares) == total
    assert all(0 not in sagecal_split(m, n) for m, n in zip(shares, workers_per_host))


@pytest.mark.parametrize("workers_per_host, total", [([3, 3, 3], 10), ([5], 6), ([2, 2], 3)])
def test_host_shares_none_when_every_split_idles_a_worker(workers_per_host, total):
    assert host_shares(workers_per_host, total) is None


def test_a_split_that_idles_a_worker_is_refused_with_a_way_out():
    # 4 workers on one host, 5 MS: blocks of 2 give 2, 2, 1, 0.
    with pytest.raises(InvalidInput, match=r"5 MS over hosts of 4 workers cannot be split so.*\(e\.g\. 4 MS\)"):
        assign_ms(["10.1.0.3 slots=5"], [f"{i}.MS" for i in range(5)], workers=4)


def test_sagecal_job_defaults_to_the_papers_parameters_with_a_tile_that_fits():
    job = job_from_dict({"profile": "sagecal-mpi", "ms": "data/*.MS", "sky_model": "s", "cluster_file": "c"})
    assert job.params == DEFAULT_SAGECAL_PARAMS
    assert " ".join(job.params) == "-A 20 -P 2 -r 5 -t 10 -e 3 -g 2 -l 10 -m 7 -x 10 -F 1 -j 5"
    assert " ".join(PAPER_SAGECAL_PARAMS) == "-A 20 -P 2 -r 5 -n 16 -t 1 -e 3 -g 2 -l 10 -m 7 -x 10 -F 1 -j 5"
    assert "-n" not in job.options  # threads are chosen per cluster


@pytest.mark.parametrize("data, field", [
    ({"profile": "mpi"}, "command"),
    ({"profile": "mpi", "command": []}, "command"),
    ({"profile": "nope"}, "profile"),
    ({"profile": "sagecal-mpi", "ms": "/abs/*.MS", "sky_model": "s", "cluster_file": "c"}, "ms"),
    ({"profile": "sagecal-mpi", "ms": "../x/*.MS", "sky_model": "s", "cluster_file": "c"}, "ms"),
    ({"profile": "mpi", "command": ["x"], "np": 0}, "np"),
    ({"profile": "mpi", "command": ["x"], "extra": 1}, "extra"),
])
def test_bad_jobs_name_the_field_in_one_line(data, field):
    with pytest.raises(InvalidInput) as caught:
        job_from_dict(data)
    assert field in str(caught.value) and "\n" not in str(caught.value)


# Input checks before mpirun: each one line, exit 2 ------------------------------

SKY = """## LSM text: name h m s d m s I Q U V si0 si1 si2 RM eX eY pa freq0
P3C196C1 8 13 35.98 48 12 59.17 32.21 0 0 0 -0.4356 0.0926 0 0 0 0 0.0 143000000.0
P3C196C2 8 13 35.81 48 13 01.59 11.87 0 0 0 -1.0042 0.7354 0 0 0 0 0.0 143000000.0

P2C1 8 14 30.34 45 56 38.70 5.09 0 0 0 0 0 0 0 0 0 0.0 143000000.0
"""
CLUSTERS = "# id chunks sources\n-1 2 P3C196C1 P3C196C2\n2 1 P2C1\n"
MS3 = [("data/a.MS", True), ("data/b.MS", True), ("data/c.MS", True)]


def sagecal_job(**fields):
    return job_from_dict({"profile": "sagecal-mpi", "ms": "data/*.MS", "sky_model": "data/sky.txt",
                          "cluster_file": "data/sky.cluster", **fields})


def checked(job=None, matches=MS3, sky=SKY, clusters=CLUSTERS, workers=3):
    return check_sagecal_inputs(job or sagecal_job(), ShareInputs(matches, sky, clusters), workers, "ft-x")


def refusal(**kwargs) -> str:
    with pytest.raises(InvalidInput) as caught:
        checked(**kwargs)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 2
    return message


def test_good_inputs_give_the_ms_as_the_containers_see_them():
    assert checked() == ["/share/data/a.MS", "/share/data/b.MS", "/share/data/c.MS"]


def test_tile_smaller_than_the_widest_cluster_is_refused():
    message = refusal(job=sagecal_job(params=["-t", "1"]))
    assert message == ("params: -t 1 is less than the 2 chunks of cluster -1 (data/sky.cluster line 2): "
                       "SAGECal 0.8.5 divides by zero then; use -t 2 or more")
    assert checked(job=sagecal_job(params=["-t", "2"]))


def test_sagecal_default_tile_applies_when_params_give_none():
    assert checked(job=sagecal_job(params=["-e", "3"]), clusters="0 120 P2C1\n")
    assert "-t 120 is less than the 121 chunks" in refusal(job=sagecal_job(params=["-e", "3"]),
                                                           clusters="0 121 P2C1\n")


@pytest.mark.parametrize("kwargs, expected", [
    ({"matches": []}, "job ms: no MS matches 'data/*.MS' on the share of ft-x"),
    ({"workers": 4}, "job asks for 4 workers but only 3 MS exist"),
    ({"matches": MS3 + [("data/notes.MS", False), ("data/x.MS", False)]},
     "job ms: 'data/notes.MS' matches 'data/*.MS' but is not a MeasurementSet (a directory with a table.dat) "
     "(1 more)"),
    ({"matches": [("data/a.MS", True), ("data/old/a.MS", True)], "workers": 1}, "2 MS are named a.MS"),
    ({"sky": None}, "job sky_model: data/sky.txt is not a readable file on the share of ft-x"),
    ({"clusters": None}, "job cluster_file: data/sky.cluster is not a readable file on the share of ft-x"),
    ({"sky": "P2C1 8 14 30.34 45 56 38.70 5.09 0 0 0 0 0 0\n"},
     "sky_model data/sky.txt line 1: 14 fields, but a -F 1 sky model has 19"),
    ({"sky": SKY.replace("5.09", "five")}, "sky_model data/sky.txt line 5: 'five' is not a number"),
    ({"sky": SKY + SKY.splitlines()[-1] + "\n"}, "source 'P2C1' is there twice"),
    ({"sky": "# nothing\n"}, "sky_model data/sky.txt: no sources"),
    ({"sky": SKY.replace(" 143000000.0\n\nP2C1", " 0\n\nP2C1")}, "the reference frequency 0 must be positive"),
    ({"clusters": "-1 2\n"}, "cluster_file data/sky.cluster line 1: a cluster is `id chunks source...`"),
    ({"clusters": "x 2 P2C1\n"}, "cluster id 'x' is not a whole number"),
    ({"clusters": "1 0 P2C1\n"}, "chunks '0' is not a whole number of at least 1"),
    ({"clusters": "# only comments\n"}, "cluster_file data/sky.cluster: no clusters"),
    ({"clusters": "-1 2 P3C196C1 P3C1\n"},
     "cluster_file data/sky.cluster line 1: cluster -1 names 'P3C1', which sky_model data/sky.txt does not have"),
])
def test_each_bad_input_is_one_line_naming_it(kwargs, expected):
    assert expected in refusal(**kwargs)


def test_format_zero_sky_models_have_17_fields():
    job = sagecal_job(params=["-F", "0", "-t", "2"])
    sky_f0 = "\n".join(" ".join(line.split()[:12] + line.split()[14:]) for line in SKY.splitlines()
                       if line.strip() and not line.startswith("#"))
    assert checked(job=job, sky=sky_f0)
    assert "a -F 0 sky model has 17" in refusal(job=job)


def test_a_stand_in_program_gets_only_the_staging_checks():
    job = sagecal_job(program="/share/probe.sh")
    assert checked(job=job, sky=None, clusters=None, matches=[("data/a.MS", False)], workers=1) == ["/share/data/a.MS"]


def test_the_share_answer_is_parsed_and_filtered_by_the_glob():
    sky = base64.b64encode(SKY.encode()).decode()
    output = f"ms data/a.MS\nother data/n.MS\nms elsewhere/z.MS\nfile {sky}\nmissing\n"
    inputs = parse_share_inputs(output, sagecal_job())
    assert inputs == ShareInputs([("data/a.MS", True), ("data/n.MS", False)], SKY, None)


@pytest.mark.parametrize("params, expected", [
    (["-f", "x"], "-f is set by the job's ms, not in params"),
    (["-s", "x"], "-s is set by the job's sky_model"),
    (["-t", "0"], "-t '0' is not a positive whole number"),
    (["-n", "two"], "-n 'two' is not a positive whole number"),
    (["-F", "2"], "-F '2' is not a sky model format (0 or 1)"),
    (["-t"], "-t has no value"),
    (["10", "-t"], "'10' is not an option"),
])
def test_bad_params_are_refused_when_the_job_is_read(params, expected):
    with pytest.raises(InvalidInput) as caught:
        sagecal_job(params=params)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_threads_given_twice_is_refused():
    with pytest.raises(InvalidInput, match="threads and -n in params both set the threads per rank"):
        sagecal_job(threads=2, params=["-n", "2"])


# Threads per rank and the command line ---------------------------------------------


class Flavors:
    """openstacksdk's conn.compute.find_flavor, answering from a table (what Nova would)."""

    def __init__(self, vcpus: dict[str, int]):
        self.vcpus = vcpus
        self.compute = self

    def find_flavor(self, name, ignore_missing=True):
        return type("Flavor", (), {"vcpus": self.vcpus[name]})()


def cluster_spec(**overrides):
    data = {"name": "ft-x", "cloud": "local", "hosts": 3, "nodes": 12, "ssh": {"allowed_cidr": "172.24.4.1/32"},
            "servers": {"manager": {"flavor": "m1.big"}, "worker": {"flavor": "m1.small"}}}
    return spec_from_dict({**data, **overrides})


def test_threads_default_to_the_fewest_vcpus_over_the_busiest_hosts_ranks():
    connect = lambda cloud: Flavors({"m1.big": 8, "m1.small": 4})  # noqa: E731
    threads, source = choose_threads(cluster_spec(), sagecal_job(), ["h0", "h0", "h1", "h1", "h1"], connect)
    assert threads == 1 and source == "4 vCPU(s) of flavor m1.small / 3 ranks on the busiest host"
    assert choose_threads(cluster_spec(), sagecal_job(), ["h0", "h1"], connect)[0] == 4
    assert choose_threads(cluster_spec(), sagecal_job(), ["h0"] * 9, connect)[0] == 1  # never 0


def test_threads_given_win_and_say_so():
    nowhere = lambda cloud: pytest.fail("no cloud asked when threads are given")  # noqa: E731
    assert choose_threads(cluster_spec(), sagecal_job(threads=3), ["h0"], nowhere) == (3, "the job's threads")
    assert choose_threads(cluster_spec(), sagecal_job(params=["-n", "5"]), ["h0"], nowhere) == (5, "params -n")


def test_run_params_add_threads_and_the_global_solutions_in_the_job_folder():
    assert run_params(sagecal_job(params=["-t", "5"]), 2, "/share/jobs/j") == [
        "-t", "5", "-n", "2", "-p", "/share/jobs/j/global.solutions"]
    assert run_params(sagecal_job(params=["-n", "4", "-p", "z.solutions"]), 2, "/share/jobs/j") == [
        "-n", "4", "-p", "z.solutions"]


def test_rank_placement_in_mpi_mode_is_the_hostfile():
    spec = cluster_spec(mode="mpi", nodes=6)
    hosts = rank_hosts(spec, ["10.1.0.3 slots=2", "10.1.0.4 slots=2", "10.1.0.5 slots=2"], 5, access=None)
    assert hosts == ["10.1.0.3", "10.1.0.3", "10.1.0.4", "10.1.0.4", "10.1.0.5"]


def test_swarm_task_hosts_reads_the_overlays_services():
    answer = json.dumps({"svc": {"Tasks": [{"EndpointIP": "10.0.9.3", "Info": {"Host IP": "10.77.0.5"}},
                                           {"EndpointIP": "10.0.9.4", "Info": {}}]}})
    assert swarm_task_hosts(answer) == {"10.0.9.3": "10.77.0.5"}
    assert swarm_task_hosts("not json") == {}


# Staging and gathering, run by a real bash on a folder like the job's --------------


def test_stage_then_gather_puts_each_solutions_file_in_solutions(tmp_path):
    job_dir = tmp_path / "jobs" / "j"
    data = tmp_path / "data"
    for name in ("a.MS", "b.MS", "c.MS"):
        (data / name).mkdir(parents=True)
    assignment = {"10.0.9.4": [str(data / "a.MS"), str(data / "c.MS")], "10.0.9.5": [str(data / "b.MS")]}
    run_bash(_stage_script(str(job_dir), assignment))
    assert sorted(p.name for p in (job_dir / "stage" / "10.0.9.4").iterdir()) == ["a.MS", "c.MS"]
    assert (job_dir / "stage" / "10.0.9.5" / "b.MS").resolve() == data / "b.MS"
    # what the workers write: X.MS.solutions next to the path they globbed (the stage)
    (job_dir / "stage" / "10.0.9.4" / "a.MS.solutions").write_text("a")
    (job_dir / "stage" / "10.0.9.4" / "c.MS.solutions").write_text("c")
    (job_dir / "stage" / "10.0.9.5" / "b.MS.solutions").write_text("b")
    run_bash(_gather_solutions_script(str(job_dir)))
    assert sorted(p.name for p in (job_dir / "solutions").iterdir()) == [
        "a.MS.solutions", "b.MS.solutions", "c.MS.solutions"]
    assert not (job_dir / "stage").exists()  # links and emptied folders gone
    assert sorted(p.name for p in data.iterdir()) == ["a.MS", "b.MS", "c.MS"]  # the MS untouched


def test_gather_keeps_both_when_two_ranks_wrote_one_ms(tmp_path):
    job_dir = tmp_path / "j"
    for address in ("10.0.9.4", "10.0.9.5"):
        (job_dir / "stage" / address).mkdir(parents=True)
        (job_dir / "stage" / address / "a.MS.solutions").write_text(address)
    (job_dir / "solutions").mkdir()
    done = run_bash(_gather_solutions_script(str(job_dir)))
    assert sorted(p.name for p in (job_dir / "solutions").iterdir()) == ["a.MS.solutions",
                                                                          "a.MS.solutions.10.0.9.5"]
    assert "a.MS.solutions written twice" in done.stderr


def run_bash(script: str) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done


# Uploads and fetch ---------------------------------------------------------------------


def test_upload_dir_is_resolved_against_the_job_file(tmp_path):
    data = {"profile": "sagecal-mpi", "upload": {"local_dir": "ms", "share_dir": "data"}}
    assert resolve_upload(data, tmp_path)["upload"]["local_dir"] == str(tmp_path / "ms")
    assert resolve_upload({"profile": "mpi"}, tmp_path) == {"profile": "mpi"}
    with pytest.raises(InvalidInput, match="must be a path relative to the share"):
        sagecal_job(upload={"local_dir": "x", "share_dir": "/abs"})


def test_fetch_keeps_files_and_leaves_links_into_the_share_out(tmp_path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, text in (("j/solutions/a.MS.solutions", b"sol"), ("j/output.log", b"log")):
            info = tarfile.TarInfo(name)
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
        link = tarfile.TarInfo("j/stage/10.0.9.4/a.MS")
        link.type, link.linkname = tarfile.SYMTYPE, "/mnt/share/data/a.MS"
        tar.addfile(link)
    archive.seek(0)
    with tarfile.open(fileobj=archive, mode="r:gz") as tar:
        tar.extractall(tmp_path, filter=_regular_members)
    assert (tmp_path / "j/solutions/a.MS.solutions").read_bytes() == b"sol"
    assert not (tmp_path / "j/stage/10.0.9.4/a.MS").exists()


# The rank wrapper, run by a real bash as Open MPI would start it -----------------------


def rank_folder(tmp_path):
    job_dir = tmp_path / "jobs" / "j"
    (job_dir / "ranks").mkdir(parents=True)
    wrapper = job_dir / "rank-wrapper.sh"
    wrapper.write_text(RANK_WRAPPER)
    wrapper.chmod(0o755)
    return job_dir, wrapper


def test_a_rank_records_its_exit_code_figures_and_output_in_the_job_folder(tmp_path):
    job_dir, wrapper = rank_folder(tmp_path)
    done = subprocess.run([str(wrapper), "bash", "-c", "echo in $PWD; exit 3"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OMPI_COMM_WORLD_RANK": "2"}, timeout=30)
    assert done.returncode == 3
    figures = json.loads((job_dir / "ranks" / "2.json").read_text())
    assert figures["rank"] == 2 and figures["exit_code"] == 3 and figures["stopped_by"] is None
    assert figures["wall_s"] >= 0 and figures["cpu_user_s"] >= 0
    assert (job_dir / "ranks" / "2.log").read_text() == f"in {job_dir}\n"  # run in the job folder


def test_a_rank_stopped_by_mpirun_still_writes_its_figures(tmp_path):
    job_dir, wrapper = rank_folder(tmp_path)
    rank = subprocess.Popen([str(wrapper), "sleep", "30"], env={"PATH": "/usr/bin:/bin", "OMPI_COMM_WORLD_RANK": "0"},
                            start_new_session=True)
    figures = job_dir / "ranks" / "0.json"
    for _ in range(100):  # the wrapper writes null figures once the program runs
        if figures.exists():
            break
        time.sleep(0.05)
    os.killpg(rank.pid, signal.SIGTERM)  # what Open MPI sends the process group of a rank it stops
    assert rank.wait(timeout=30) != 0
    written = json.loads(figures.read_text())
    assert written["stopped_by"] == "SIGTERM" and written["exit_code"] is not None and written["wall_s"] is not None
