"""Router -> worker TLS plumbing with a CA made here: `workers.server.server_credentials` on a real grpc.aio
server, `router.worker_client.WorkerClient` with `WorkerTls` (no model: the server has only the health
service, so a call that gets past the handshake answers UNIMPLEMENTED)."""
from __future__ import annotations

import grpc
import pytest

from router.worker_client import WorkerClient, WorkerTls
from tests.tls_certs import make_ca_and_cert
from workers.server import server_credentials


async def _serve(creds):
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_tls_client_reaches_a_tls_worker_and_plaintext_or_a_wrong_ca_does_not(tmp_path):
    good = make_ca_and_cert(tmp_path / "good")
    other = make_ca_and_cert(tmp_path / "other")
    server, address = await _serve(server_credentials(good["cert"], good["key"]))
    try:
        async def code(client: WorkerClient) -> grpc.StatusCode:
            try:
                await client.info(timeout=5)
            except grpc.aio.AioRpcError as e:
                return e.code()
            finally:
                await client.close()
            return grpc.StatusCode.OK

        assert await code(WorkerClient(address, WorkerTls.from_files(good["ca"]))) == grpc.StatusCode.UNIMPLEMENTED
        assert await code(WorkerClient(address)) == grpc.StatusCode.UNAVAILABLE
        assert await code(WorkerClient(address, WorkerTls.from_files(other["ca"]))) == grpc.StatusCode.UNAVAILABLE
        named = WorkerTls.from_files(good["ca"], server_name="localhost")
        assert await code(WorkerClient(address, named)) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


def test_tls_files_are_checked(tmp_path):
    assert WorkerTls.from_files(None) is None
    with pytest.raises(ValueError, match="cannot be read"):
        WorkerTls.from_files(str(tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValueError, match="no PEM certificate"):
        WorkerTls.from_files(str(tmp_path / "junk.pem"))
    with pytest.raises(ValueError, match="cannot be read"):
        server_credentials(str(tmp_path / "missing.pem"), str(tmp_path / "missing.key"))
