"""Starts and stops the four services as separate processes (`chatplane up`, tests, bench)."""

from chatplane.launcher.stack import ServiceProcess, Stack, StackInfo

__all__ = ["ServiceProcess", "Stack", "StackInfo"]
