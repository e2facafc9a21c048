"""Run netsvc's chat inside your own Twisted program, with a bot that takes part.

Run it with ``python chat_bot.py [PORT]`` (default 7777), then ``nc 127.0.0.1 7777``;
Ctrl-C stops it. Say ``!help`` in the lobby.
"""

import sys

from twisted.internet import defer, task

from netsvc.chat import (
    ChatLimits,
    PrivateMessage,
    RoomMessage,
    UserJoined,
    chat_service,
)
from netsvc.listening import ListenError


def build(reactor, port=7777):
    """A chat on 127.0.0.1 and a bot called ``helper`` that lives in the lobby."""
    service = chat_service(
        reactor,
        port=port,
        interface="127.0.0.1",
        limits=ChatLimits(history_lines=20, idle_timeout=3600.0),
    )
    registry = service.registry  # the library API: observe and drive the chat
    bot = registry.add_bot("helper")  # holds the nickname, appears in /who
    bot.join("lobby")

    def answer(event):
        if isinstance(event, UserJoined) and event.nick != bot.nick and event.room in bot.rooms:
            bot.say(event.room, f"welcome, {event.nick}! Say !help for what I can do.")
        elif isinstance(event, RoomMessage) and event.nick != bot.nick:
            if event.text == "!help":
                bot.say(event.room, "!users, !rooms, !echo TEXT, or /msg helper anything")
            elif event.text == "!users":
                bot.say(event.room, ", ".join(user.nick for user in registry.users()))
            elif event.text == "!rooms":
                bot.say(event.room, ", ".join(
                    f"{room.name} ({len(room.members)})" for room in registry.rooms()
                ))
            elif event.text.startswith("!echo "):
                bot.act(event.room, f"echoes: {event.text[6:]}")
        elif isinstance(event, PrivateMessage) and event.target == bot.nick:
            bot.message(event.sender, f"you told me {event.text!r}")

    registry.subscribe(answer)  # called after each event's lines have gone out
    return service, bot


def announce_every(reactor, service, seconds):
    """A server notice to the lobby now and then: driving the chat from a timer."""

    def announce():
        count = len(service.registry.users())
        service.registry.post("#lobby", f"{count} people (and bots) are here")

    loop = task.LoopingCall(announce)
    loop.clock = reactor  # the injected reactor, so tests can use a Clock
    loop.start(seconds, now=False)
    return loop


def main(reactor, port=7777):
    service, _ = build(reactor, port)
    try:
        service.startService()  # binds now
    except ListenError as error:
        raise SystemExit(error.explain()) from None  # one line, exit status 1
    loop = announce_every(reactor, service, 3600)
    reactor.addSystemEventTrigger("before", "shutdown", loop.stop)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    print(f"chat on 127.0.0.1 port {port}; Ctrl-C stops", flush=True)
    return defer.Deferred()  # never fires: serve until the reactor stops


if __name__ == "__main__":
    task.react(main, [int(arg) for arg in sys.argv[1:2]])
