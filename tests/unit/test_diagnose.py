from pgop.kernel.diagnose import instance_report, pod_problem, volume_problem


def pvc(phase="Pending", sc="standard"):
    return {"metadata": {"name": "orders-0"}, "spec": {"storageClassName": sc}, "status": {"phase": phase}}


def pod(name="orders-0", waiting=None, phase="Pending", scheduled=True, init=False, last=None):
    cs = {"name": "postgres", "state": {"waiting": waiting} if waiting else {"running": {}}}
    if last:
        cs["lastState"] = {"terminated": last}
    status = {"phase": phase, "conditions": [] if scheduled else [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}]}
    status["initContainerStatuses" if init else "containerStatuses"] = [cs]
    return {"metadata": {"name": name}, "status": status}


def test_missing_storage_class_is_named():
    assert volume_problem(pvc(sc="fast"), storage_class_exists=False) == \
        "volume orders-0 is Pending: StorageClass 'fast' does not exist"


def test_bound_volume_is_no_problem():
    assert volume_problem(pvc(phase="Bound"), storage_class_exists=True) is None


def test_image_that_does_not_exist_is_reported_with_its_reason():
    p = pod(waiting={"reason": "ErrImageNeverPull", "message": 'image "x:1" is not present'})
    assert pod_problem(p) == 'pod orders-0: container postgres: ErrImageNeverPull: image "x:1" is not present'


def test_crash_loop_reports_the_exit_code():
    p = pod(waiting={"reason": "CrashLoopBackOff", "message": "back-off"},
            last={"exitCode": 1, "reason": "Error"}, init=True)
    assert "CrashLoopBackOff: exited with 1 (Error)" in pod_problem(p)


def test_unschedulable_pod():
    assert "cannot be scheduled: 0/1 nodes are available" in pod_problem(pod(scheduled=False))


def test_starting_pods_are_not_problems():
    assert pod_problem(pod(waiting={"reason": "ContainerCreating"})) is None


def test_report_prefers_the_volume_then_pods_then_waiting():
    phase, message = instance_report(pvc(sc="fast"), [pod(waiting={"reason": "ErrImagePull"})], [], False)
    assert (phase, message) == ("Pending", "volume orders-0 is Pending: StorageClass 'fast' does not exist")
    phase, message = instance_report(pvc(phase="Bound"), [pod("orders-0-bootstrap")], ["initdb runs"], True)
    assert (phase, message) == ("Bootstrapping", "initdb runs")


def test_crash_loop_says_the_last_line_of_the_termination_message():
    p = pod(name="orders-0-bootstrap", waiting={"reason": "CrashLoopBackOff", "message": "back-off"},
            last={"exitCode": 1, "reason": "Error",
                  "message": "INFO restoring\npgop agent bootstrap: targetTime 2020-01-01T00:00:00Z is before the "
                             "first recoverability point\n"})
    assert pod_problem(p).endswith("exited with 1 (Error): pgop agent bootstrap: targetTime "
                                   "2020-01-01T00:00:00Z is before the first recoverability point")


def test_a_postgres_pod_whose_agent_bootstraps_reports_bootstrapping_until_postgres_was_ready():
    def bootstrapping(state, ready=False, annotated=True):
        return {"metadata": {"name": "orders-0",
                             "annotations": {"pgop.io/bootstrap-mode": "basebackup"} if annotated else {}},
                "status": {"phase": "Running", "containerStatuses": [{"name": "postgres", "ready": ready, "state": state}]}}
    waiting = ["basebackup of orders-0 runs in pod orders-0 (running)"]
    assert instance_report(pvc(phase="Bound"), [bootstrapping({"running": {}})], waiting, True) == \
        ("Bootstrapping", waiting[0])
    done = bootstrapping({"running": {}}, ready=True)
    assert instance_report(pvc(phase="Bound"), [done], [], True)[0] == "Pending"
    # the volume marked and the permission withdrawn: the pod runs Postgres, it no longer bootstraps
    assert instance_report(pvc(phase="Bound"), [bootstrapping({"running": {}}, annotated=False)], [], True)[0] == "Pending"
