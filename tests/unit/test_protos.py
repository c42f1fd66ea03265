"""The checked-in stubs are what the .proto files generate (python -m protos.codegen)."""
from protos.codegen import main


def test_stubs_match_protos(capsys):
    assert main(["--check"]) == 0, capsys.readouterr().out


def test_services_expose_the_contract():
    from thinkroute.v1 import router_pb2, worker_pb2

    worker = {m.name for m in worker_pb2.DESCRIPTOR.services_by_name["Worker"].methods}
    assert {"Generate", "Score", "HiddenState", "Info", "Tokenize", "Load"} <= worker
    router = {m.name for m in router_pb2.DESCRIPTOR.services_by_name["Router"].methods}
    assert {"Generate", "GenerateStream", "SetDial", "GetDial", "PoolStats"} <= router
    gen = worker_pb2.DESCRIPTOR.services_by_name["Worker"].methods_by_name["Generate"]
    assert gen.server_streaming and not gen.client_streaming
