"""A TCP proxy on a free loopback port in front of Redis, for the tests that
need a link that misbehaves in one precise way. One thread per direction of
each connection; a subclass's forward() decides what happens to each chunk."""
import socket
import threading


class ForwardingProxy:
    def __init__(self, redis_port):
        self.redis_port = redis_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def new_state(self):
        """Per connection, shared by its two directions."""
        return {}

    def forward(self, data, src, dst, state, upstream):
        """Pass DATA (from jobd when UPSTREAM) on; False ends the connection."""
        dst.sendall(data)
        return True

    def close(self):
        """Stop accepting, and cut every connection still open."""
        self.listener.close()
        for s in self.sockets:
            s.close()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.redis_port))
            except OSError:         # Redis is down: so is this connection
                client.close()
                continue
            self.sockets += [client, server]
            state = self.new_state()
            for src, dst, upstream in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, state, upstream),
                                 daemon=True).start()

    def _pipe(self, src, dst, state, upstream):
        try:
            while True:
                data = src.recv(65536)
                if not data or not self.forward(data, src, dst, state, upstream):
                    break
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
