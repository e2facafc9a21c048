"""twistd plugins for netsvc.

Only lazy ServiceMaker lines live here: importing netsvc (or the reactor) at plugin-scan
time would slow every `twistd` invocation and break `twistd --reactor=...`.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

netsvc_busypoll = Reactor(
    "netsvc-busypoll",
    "netsvc.busypoll",
    "epoll, polling up to 100 us before each sleep (lower latency, more CPU).",
)

netsvc = ServiceMaker(
    "netsvc",
    "netsvc.tap",
    "The netsvc suite: echo, TFTP, chat and broadcast in one process.",
    "netsvc",
)
netsvc_tftp = ServiceMaker(
    "netsvc-tftp", "netsvc.tftp_tap", "TFTP server (RFC 1350 + options).", "netsvc-tftp"
)
netsvc_echo = ServiceMaker(
    "netsvc-echo", "netsvc.echo_tap", "RFC 862 echo over TCP and UDP.", "netsvc-echo"
)
netsvc_chat = ServiceMaker(
    "netsvc-chat", "netsvc.chat_tap", "Multi-user line chat over TCP.", "netsvc-chat"
)
netsvc_broadcast = ServiceMaker(
    "netsvc-broadcast",
    "netsvc.broadcast_tap",
    "LAN broadcast: peer table, announcements, discovery replies.",
    "netsvc-broadcast",
)
