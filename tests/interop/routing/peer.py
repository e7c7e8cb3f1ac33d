"""A user agent on aiosip-ws's client side for the routing examples' tests: registers
AOR at URL, answers MESSAGE 200 (printing ``MESSAGE FROM BODY``) and every INVITE with
STATUS (printing ``INVITE FROM STATUS``); prints ``registered``; runs until SIGTERM.

    python tests/interop/routing/peer.py URL AOR STATUS
"""
import asyncio
import signal
import sys

from aiosip_ws import Application


async def main(url: str, aor: str, status: int) -> None:
    app = Application()

    async def on_message(dialog, msg):
        print('MESSAGE', msg.headers['From'], msg.payload, flush=True)
        dialog.reply(msg, 200)

    async def on_invite(dialog, msg):
        print('INVITE', msg.headers['From'], status, flush=True)
        dialog.reply(msg, status)

    app.router.add_route('MESSAGE', on_message)
    app.router.add_route('INVITE', on_invite)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        registration = await app.start_dialog(aor, aor, remote_addr=url)
        response = await asyncio.wait_for(registration.register(expires=300), 10)
        print('registered' if response.status_code == 200 else 'refused %d'
              % response.status_code, flush=True)
        await stop.wait()
    finally:
        await app.close()


if __name__ == '__main__':
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
