"""TLS and mutual TLS against the in-process server, with certificates
made by openssl for the test."""

import os
import shutil
import subprocess
import tempfile
import unittest

import grpc

from biobridge import Client, TLSConfig, Unavailable
from biobridge.biometrics.v1 import biometrics_service_pb2 as pb

from .fakeserver import TOKEN, Server, latest


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    """CA, a server certificate for 127.0.0.1/localhost, a client certificate."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:persistence.test\n")
    with open(os.path.join(d, "client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)


def read(d, name):
    with open(os.path.join(d, name), "rb") as f:
        return f.read()


@unittest.skipUnless(shutil.which("openssl"), "openssl is needed to make test certificates")
class MutualTLSTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp()
        make_pki(cls.dir)
        creds = grpc.ssl_server_credentials(
            [(read(cls.dir, "server.key"), read(cls.dir, "server.pem"))],
            root_certificates=read(cls.dir, "ca.pem"),
            require_client_auth=True,
        )
        cls.srv = Server(creds)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_mutual_tls(self):
        self.srv.fake.push("GetLatest", pb.GetLatestResponse(values=[latest()]))
        p = lambda n: os.path.join(self.dir, n)  # noqa: E731
        tls = TLSConfig.from_files(p("ca.pem"), p("client.pem"), p("client.key"))
        with Client(self.srv.address, TOKEN, tls=tls) as c:
            self.assertEqual(len(c.get_latest("user-1")), 1)

    def test_server_name_override(self):
        port = self.srv.address.rsplit(":", 1)[1]
        tls = TLSConfig(read(self.dir, "ca.pem"), read(self.dir, "client.pem"), read(self.dir, "client.key"),
                        server_name="persistence.test")
        with Client(f"127.0.0.1:{port}", TOKEN, tls=tls) as c:
            self.assertEqual(c.get_latest("user-1"), [])

    def test_without_client_certificate_fails(self):
        with Client(self.srv.address, TOKEN, tls=TLSConfig(read(self.dir, "ca.pem")), timeout=3) as c:
            with self.assertRaises(Unavailable):
                c.get_latest("user-1")

    def test_wrong_ca_fails(self):
        other = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, other, True)
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
                 "-keyout", "o.key", "-out", "o.pem", cwd=other)
        tls = TLSConfig(read(other, "o.pem"), read(self.dir, "client.pem"), read(self.dir, "client.key"))
        with Client(self.srv.address, TOKEN, tls=tls, timeout=3) as c:
            with self.assertRaises(Unavailable):
                c.get_latest("user-1")


if __name__ == "__main__":
    unittest.main()
