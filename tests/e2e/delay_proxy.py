"""A TCP proxy on a free loopback port that delays every chunk, each way,
by a fixed time and keeps their order: a distant server for the tests (a
round trip of 2 x delay), the server itself still on this machine. One
asyncio loop in a thread of its own: threads per socket would add the GIL's
switch interval (5 ms) to some chunks, which is more than the tests measure."""
import asyncio
import collections
import threading

from conftest import free_port


class DelayProxy:
    def __init__(self, target_port, delay):
        self.target_port, self.delay = target_port, delay
        # Set by a test: connections accepted from then on reach the server
        # this much later (what a client sends meanwhile waits), those
        # already open are not slowed. A PostgreSQL cancel request comes on
        # a connection of its own: this makes it late.
        self.connect_delay = 0.0
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.writers = []
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        if not started.wait(5):
            raise RuntimeError("delay proxy did not start")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        async def shutdown():
            self.server.close()
            for w in self.writers:
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._connection, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()

    async def _connection(self, client_reader, client_writer):
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self.writers += [client_writer, server_writer]
        self.loop.create_task(self._pump(client_reader, server_writer))
        await self._pump(server_reader, client_writer)

    async def _pump(self, reader, writer):
        chunks = collections.deque()     # delivered strictly in the order read
        while True:
            try:
                data = await reader.read(65536)
            except OSError:
                data = b""
            chunks.append(data)
            self.loop.call_at(self.loop.time() + self.delay, self._deliver, writer, chunks)
            if not data:
                return

    @staticmethod
    def _deliver(writer, chunks):
        data = chunks.popleft()
        if writer.is_closing():
            return
        if data:
            writer.write(data)
        elif writer.can_write_eof():
            writer.write_eof()
