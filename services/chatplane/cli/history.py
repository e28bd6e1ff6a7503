"""`chatplane history`: list the caller's conversations, or print one conversation's messages
oldest first, reading every page from the Gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click
import grpc
from google.protobuf import timestamp_pb2

from chatplane.cli.chat import Gateway, connect, describe_rpc_error, error_exit
from chatplane.cli.client import ClientTarget, gateway_options, tls_files
from chatplane.common.timestamps import datetime_of
from chatplane.v1 import gateway_pb2, resources_pb2

HISTORY_CALL_TIMEOUT_SECONDS = 30.0
_ROLES = {resources_pb2.ROLE_USER: "user", resources_pb2.ROLE_ASSISTANT: "assistant"}


async def list_conversations(
    gateway: Gateway, *, page_size: int = 100
) -> list[resources_pb2.Conversation]:
    """All of the caller's conversations, most recently updated first."""
    conversations: list[resources_pb2.Conversation] = []
    token = ""
    while True:
        response = await gateway.stub.ListConversations(
            gateway_pb2.ListConversationsRequest(page_size=page_size, page_token=token),
            metadata=gateway.metadata,
            timeout=HISTORY_CALL_TIMEOUT_SECONDS,
        )
        conversations.extend(response.conversations)
        if not response.next_page_token or response.next_page_token == token:
            return conversations
        token = response.next_page_token


async def read_conversation(
    gateway: Gateway, conversation_id: str, *, page_size: int = 500
) -> tuple[resources_pb2.Conversation, list[resources_pb2.Message]]:
    """One conversation and all of its messages, oldest first."""
    messages: list[resources_pb2.Message] = []
    token = ""
    while True:
        response = await gateway.stub.GetConversation(
            gateway_pb2.GetConversationRequest(
                conversation_id=conversation_id, page_size=page_size, page_token=token
            ),
            metadata=gateway.metadata,
            timeout=HISTORY_CALL_TIMEOUT_SECONDS,
        )
        messages.extend(response.messages)
        if not response.next_page_token or response.next_page_token == token:
            return response.conversation, messages
        token = response.next_page_token


def format_time(timestamp: timestamp_pb2.Timestamp) -> str:
    """A timestamp in local time to the second, or "-" when unset."""
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    return datetime_of(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def conversation_table(conversations: list[resources_pb2.Conversation]) -> list[str]:
    """Aligned lines (id, updated, messages, title) under a header; ids are never shortened."""
    header = ("CONVERSATION", "UPDATED", "MESSAGES", "TITLE")
    rows = [
        (c.conversation_id, format_time(c.update_time), str(c.message_count), _one_line(c.title))
        for c in conversations
    ]
    id_width = max(len(row[0]) for row in [header, *rows])
    time_width = max(len(row[1]) for row in [header, *rows])
    return [
        f"{cid:<{id_width}}  {updated:<{time_width}}  {count:>8}  {title}".rstrip()
        for cid, updated, count, title in [header, *rows]
    ]


def message_lines(message: resources_pb2.Message) -> list[str]:
    """A message as a heading (role, time, model, status) and its text indented."""
    heading = [_ROLES.get(message.role, "unknown"), format_time(message.create_time)]
    if message.role == resources_pb2.ROLE_ASSISTANT and message.model:
        heading.append(message.model)
    if message.status == resources_pb2.MESSAGE_STATUS_INTERRUPTED:
        heading.append("INTERRUPTED (partial answer)")
    if message.sibling_count > 1:
        # One of several answers or edits (docs/conversation-tree.md): which, of how many.
        heading.append(f"< {message.sibling_index + 1}/{message.sibling_count} >")
    lines = [" · ".join(heading)]
    lines.extend(f"  {line}" for line in (message.text.splitlines() or [""]))
    return lines


@click.command(short_help="List conversations, or show one conversation.")
@click.argument("conversation_id", required=False)
@gateway_options
@click.pass_obj
def history(
    data_dir: Path,
    conversation_id: str | None,
    address: str | None,
    api_key: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_ca: Path | None,
) -> None:
    """List your conversations, or print one conversation's messages oldest first."""
    target = ClientTarget.resolve(data_dir, address, api_key, tls_files(tls_cert, tls_key, tls_ca))
    try:
        if conversation_id:
            asyncio.run(_print_conversation(target, conversation_id))
        else:
            asyncio.run(_print_conversations(target))
    except grpc.aio.AioRpcError as error:
        error_exit(describe_rpc_error(error))


async def _print_conversations(target: ClientTarget) -> None:
    async with connect(target) as gateway:
        conversations = await list_conversations(gateway)
    if not conversations:
        click.echo("no conversations yet")
        return
    for index, line in enumerate(conversation_table(conversations)):
        click.echo(click.style(line, bold=True) if index == 0 else line)


async def _print_conversation(target: ClientTarget, conversation_id: str) -> None:
    async with connect(target) as gateway:
        conversation, messages = await read_conversation(gateway, conversation_id)
    title = _one_line(conversation.title) or "(untitled)"
    click.echo(click.style(f"{title}", bold=True))
    click.echo(
        click.style(
            f"conversation {conversation.conversation_id} · created "
            f"{format_time(conversation.create_time)} · {len(messages)} messages",
            dim=True,
        )
    )
    for message in messages:
        click.echo("")
        heading, *body = message_lines(message)
        interrupted = message.status == resources_pb2.MESSAGE_STATUS_INTERRUPTED
        click.echo(click.style(heading, bold=True, fg="yellow" if interrupted else None))
        for line in body:
            click.echo(line)
