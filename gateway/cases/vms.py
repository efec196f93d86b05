"""Desktop VMs: made from a bundle; their power (start, stop, reboot, rebuild, delete) through
the one state table (gateway/providers/libvirt/lifecycle.py); kept in step with the hypervisors;
their running modes (AlwaysOn, AutoStop); start on connect with its progress; self-service.

Over 400 lines on purpose: one desktop VM's life in one place. Every state change goes through
``_move``, a compare-and-set in the store, so that concurrent requests and several gateway
processes agree on who carries out an action: the one whose move succeeded. Usage (running
intervals) is written beside each move; reading and pricing it is ``usage.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from ..audit import Audit, AuditKind
from ..config import HypervisorConfig
from ..errors import BadRequest, Conflict, DesktopUnavailable, Forbidden, NotFound
from ..model import ALWAYS_ON, AUTO_STOP, MODE_NAMES, RUNNING_MODES, Bundle, Desktop, DesktopVm
from ..providers import DesktopSpec
from ..providers.libvirt.hypervisor import HypervisorError, HypervisorUnreachable
from ..providers.libvirt.lifecycle import (
    ACTIONS,
    PASSING,
    Abandoned,
    Action,
    Asked,
    Done,
    Failed,
    IllegalMove,
    Observed,
    Seen,
    VmState,
    step,
)
from ..providers.libvirt.provider import LibvirtProvider
from ..providers.registry import Providers, desktop_spec
from ..store import Store
from .actor import Actor
from .bundles import self_service_policy
from .catalog import desktop_name

log = logging.getLogger("deskgate.vms")

# Power actions as people name them. "restart" is the self-service name of a reboot.
POWER: Mapping[str, Action] = {"start": Action.START, "stop": Action.STOP,
                               "reboot": Action.REBOOT, "restart": Action.REBOOT,
                               "rebuild": Action.REBUILD, "delete": Action.DELETE}
# The self-service permission an action needs; actions not here are for admins only.
SELF_SERVICE_OF: Mapping[Action, str] = {Action.REBOOT: "restart", Action.REBUILD: "rebuild"}
# Actions that lose something: the person types the desktop's name to confirm.
CONFIRMED = frozenset({Action.REBUILD, Action.DELETE})
# The stages of a start on connect, as the client page names them.
STAGES: Mapping[str, str] = {"starting": "Starting the VM",
                             "screen": "Waiting for its screen",
                             "connecting": "Connecting"}
MAX_AUTO_STOP_SECONDS = 7 * 24 * 3600
_ENDS_A_RUN = frozenset({VmState.STOPPED, VmState.ERROR, VmState.REBUILDING, VmState.DELETING,
                         VmState.DELETED})


class VmUnavailable(DesktopUnavailable):
    """A desktop VM that could not be made ready: the client says so and does not retry."""

    final = True


@dataclass(frozen=True)
class Progress:
    """A start in progress on this node: its stage, since when, and the usual time it takes."""

    stage: str  # a key of STAGES
    started_at: float
    estimate: float | None  # seconds, from this desktop's past starts; None: none yet


@dataclass(frozen=True)
class VmSettings:
    hypervisors: Mapping[str, HypervisorConfig]
    geometry: str = "1280x800"
    stop_timeout: float = 60.0
    start_timeout: float = 180.0
    reconcile_seconds: float = 30.0


class DesktopVms:
    def __init__(self, store: Store, audit: Audit, providers: Providers,
                 settings: VmSettings, *, may_use: Callable[[Actor, Desktop], Awaitable[bool]],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._audit = audit
        self._providers = providers
        self._settings = settings
        self._may_use = may_use  # is the desktop the actor's own (assigned to them)?
        self._clock = clock
        # What this node is doing to which VM (the store says what every node is doing).
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._progress: dict[int, Progress] = {}
        self._unreachable: dict[str, str] = {}  # hypervisor -> libvirt's reason
        self._idle_checks: dict[int, asyncio.TimerHandle] = {}
        providers.idle_listeners.append(self._session_ended)

    # reading -----------------------------------------------------------------------------------
    def _provider(self) -> LibvirtProvider:
        provider = self._providers.get("libvirt")
        assert isinstance(provider, LibvirtProvider)
        return provider

    async def desktop(self, desktop_id: int) -> Desktop:
        """A desktop VM; NotFound for a missing desktop or one that is not a VM."""
        d = await self._store.get_desktop(desktop_id)
        if d is None or d.vm is None:
            raise NotFound("no such desktop VM")
        return d

    async def desktops(self) -> list[Desktop]:
        return await self._store.list_desktop_vms()

    def progress(self, desktop_id: int) -> Progress | None:
        return self._progress.get(desktop_id)

    def hypervisor_problem(self, name: str) -> str | None:
        """libvirt's reason when the hypervisor could not be reached lately, else None."""
        return self._unreachable.get(name)

    def busy(self, desktop_id: int) -> bool:
        """An action on the VM runs on this node now."""
        task = self._tasks.get(desktop_id)
        return task is not None and not task.done()

    async def estimate(self, desktop_id: int) -> float | None:
        """How long this desktop usually takes to start (the median of its last starts)."""
        past = await self._store.vm_start_seconds(desktop_id, limit=10)
        return statistics.median(past) if past else None

    def _spec(self, d: Desktop) -> DesktopSpec:
        return desktop_spec(d, self._settings.geometry)

    # creating ----------------------------------------------------------------------------------
    async def create(self, actor: Actor, name: str, bundle: Bundle, *,
                     hypervisor: str = "default", mode: str = AUTO_STOP,
                     auto_stop_seconds: int = 3600, self_service: tuple[str, ...] | None = None,
                     host: str = "", port: int = 0) -> Desktop:
        """A new desktop VM: its disks made and its domain defined (stopped), or in ``error``
        with the hypervisor's reason. AlwaysOn ones are started at once."""
        actor.require_admin()
        name = desktop_name(name)
        if hypervisor not in self._settings.hypervisors:
            known = ", ".join(sorted(self._settings.hypervisors))
            raise BadRequest(f"unknown hypervisor {hypervisor!r} (configured: {known})")
        _check_mode(mode, auto_stop_seconds)
        policy = None if self_service is None else self_service_policy(self_service)
        protocol = "rdp" if bundle.protocol == "rdp" else "vnc"
        if bundle.protocol != "console" and not (host and 0 < port < 65536):
            raise BadRequest(f"a {bundle.protocol} bundle's desktops need the guest's address"
                             " (host and port)")
        now = self._clock()
        d = await self._store.create_desktop_vm(
            name, DesktopVm(0, bundle, hypervisor, VmState.CREATING.value, "", now, mode,
                            auto_stop_seconds, policy),
            protocol=protocol, host=host if bundle.protocol != "console" else "",
            port=port if bundle.protocol != "console" else 0)
        await self._record(actor, d, f"desktop VM created (bundle {bundle.name}, {hypervisor},"
                                     f" {mode_words(mode, auto_stop_seconds)})")
        try:
            await self._provider().create(self._spec(d))
        except HypervisorError as exc:
            await self._move(d, VmState.CREATING, Failed(Action.CREATE, exc.reason))
        else:
            await self._move(d, VmState.CREATING, Done(Action.CREATE))
        d = await self.desktop(d.id)
        if mode == ALWAYS_ON and d.vm is not None and d.vm.state == VmState.STOPPED:
            self._spawn(d, Action.START, "AlwaysOn")
        return d

    # power -------------------------------------------------------------------------------------
    async def power(self, actor: Actor, desktop_id: int, action_name: str, *,
                    confirm: str = "", wait: bool = True) -> Desktop:
        """Ask for a power action. An admin may ask for any; a person for their own desktop's
        restart or rebuild when its policy allows. Rebuild and delete need ``confirm``, the
        desktop's name. ``wait``: return when it is done, else as soon as it began (the pages
        show the rest live). Conflict when the VM's state does not allow it now."""
        action = POWER.get(action_name)
        if action is None:
            raise BadRequest(f"power actions are {', '.join(POWER)}")
        d = await self.desktop(desktop_id)
        await self._authorize(actor, d, action)
        if action in CONFIRMED and confirm.strip() != d.name:
            raise BadRequest(f"to {action.value} this desktop, type its name ({d.name}) to"
                             " confirm")
        vm = _vm(d)
        await self._begin(d, VmState(vm.state), action)
        await self._record(actor, d, f"desktop VM {action.value} asked")
        task = self._spawn(d, action, actor.name, begun=True)
        if wait:
            await asyncio.shield(task)
        return await self.desktop(d.id) if action is not Action.DELETE else d

    async def _authorize(self, actor: Actor, d: Desktop, action: Action) -> None:
        if actor.is_admin:
            return
        permission = SELF_SERVICE_OF.get(action)
        if not await self._may_use(actor, d):
            raise NotFound("no such desktop VM")
        if permission is None or permission not in _vm(d).self_service:
            await self._record(actor, d, f"desktop VM {action.value} refused: not allowed by"
                                         " its self-service policy", kind=AuditKind.ADMIN_DENIED)
            raise Forbidden(f"you may not {SELF_SERVICE_OF.get(action, action.value)} this"
                            " desktop yourself; ask an administrator")

    async def set_mode(self, actor: Actor, desktop_id: int, mode: str,
                       auto_stop_seconds: int | None = None) -> Desktop:
        """Switch the running mode (admins; a person for their own desktop when its policy
        allows "mode"). Cost follows from the switch on."""
        d = await self.desktop(desktop_id)
        vm = _vm(d)
        if not actor.is_admin:
            if not await self._may_use(actor, d):
                raise NotFound("no such desktop VM")
            if "mode" not in vm.self_service:
                await self._record(actor, d, "running mode change refused: not allowed by its"
                                             " self-service policy",
                                   kind=AuditKind.ADMIN_DENIED)
                raise Forbidden("you may not change this desktop's running mode yourself; ask"
                                " an administrator")
            if auto_stop_seconds is not None and auto_stop_seconds != vm.auto_stop_seconds:
                raise Forbidden("only an administrator sets how long an idle desktop runs")
        seconds = vm.auto_stop_seconds if auto_stop_seconds is None else auto_stop_seconds
        _check_mode(mode, seconds)
        await self._store.set_vm_mode(d.id, mode, seconds)
        now = self._clock()
        if mode != vm.mode and await self._store.close_vm_run(d.id, now):
            await self._open_run(await self.desktop(d.id), now)  # the rest of the run, re-priced
        await self._record(actor, d, f"running mode set: {mode_words(mode, seconds)}")
        d = await self.desktop(d.id)
        if mode == ALWAYS_ON and _vm(d).state == VmState.STOPPED:
            self._spawn(d, Action.START, "AlwaysOn")
        return d

    async def set_self_service(self, actor: Actor, desktop_id: int,
                               policy: tuple[str, ...] | None) -> Desktop:
        """The desktop's own self-service policy (None: its bundle's)."""
        actor.require_admin()
        d = await self.desktop(desktop_id)
        checked = None if policy is None else self_service_policy(policy)
        await self._store.set_vm_self_service(d.id, checked)
        words = "the bundle's" if checked is None else (", ".join(checked) or "none")
        await self._record(actor, d, f"self-service set: {words}")
        return await self.desktop(d.id)

    # start on connect --------------------------------------------------------------------------
    async def ready(self, d: Desktop) -> None:
        """Make the desktop answer before its ticket is minted (the broker's step before every
        connect). A VM that is stopped is started (its stages show in ``progress``); a start
        that fails or times out is ``VmUnavailable``: the person is told, nothing loops."""
        if d.vm is None:
            await self._providers.get(d.provider).ensure_running(
                desktop_spec(d, self._settings.geometry))
            return
        problem = self._unreachable.get(d.vm.hypervisor)
        deadline = time.monotonic() + self._settings.start_timeout + 5
        while True:
            d = await self.desktop(d.id)
            state = VmState(_vm(d).state)
            if state is VmState.RUNNING:
                return
            if state in (VmState.STOPPED, VmState.ERROR):
                if problem is not None:
                    raise VmUnavailable("the desktop's host cannot be reached now; try again"
                                        " later or ask your administrator")
                with contextlib.suppress(Conflict):  # another request began it: wait for it
                    await self._begin(d, state, Action.START)
                    self._spawn(d, Action.START, "start on connect", begun=True)
            elif state not in (VmState.STARTING, VmState.REBOOTING):
                raise VmUnavailable(f"the desktop is {state.value} now; try again in a minute")
            task = self._tasks.get(d.id)
            if task is not None and not task.done():
                await asyncio.shield(task)
                d = await self.desktop(d.id)
                if _vm(d).state == VmState.ERROR:
                    log.info("[desktop=%s] start on connect failed: %s", d.name, _vm(d).reason)
                    raise VmUnavailable("the desktop could not be started; your administrator"
                                        " can see why on its page")
            elif time.monotonic() > deadline:
                raise VmUnavailable("the desktop did not start in time; try again later")
            else:
                await asyncio.sleep(0.5)  # another gateway process is starting it

    # carrying out actions ----------------------------------------------------------------------
    async def _begin(self, d: Desktop, state: VmState, action: Action) -> None:
        """Move the VM into the action's passing state, or Conflict (not allowed now, or
        another request moved it first)."""
        try:
            await self._move(d, state, Asked(action))
        except IllegalMove as exc:
            raise Conflict(str(exc)) from None

    async def _move(self, d: Desktop, state: VmState,
                    event: Asked | Done | Failed | Observed | Abandoned) -> VmState:
        """One state change, compare-and-set from ``state``: Conflict when the VM is no longer
        in it. Running intervals open and close here."""
        nxt = step(state, event)
        if nxt.state is state and not nxt.reason:
            return state
        now = self._clock()
        if not await self._store.move_vm_state(d.id, [state.value], nxt.state.value,
                                               nxt.reason, now):
            raise Conflict("the desktop VM changed meanwhile; look again and retry")
        if nxt.state is VmState.RUNNING and state is not VmState.REBOOTING:
            await self._open_run(d, now)
        elif nxt.state in _ENDS_A_RUN:
            await self._store.close_vm_run(d.id, now)
        return nxt.state

    async def _open_run(self, d: Desktop, at: float) -> None:
        vm = _vm(d)
        await self._store.open_vm_run(d.id, d.name, at, vm.mode, vm.bundle.hourly_rate,
                                      vm.bundle.monthly_rate)

    def _spawn(self, d: Desktop, action: Action, who: str, *, begun: bool = False) -> \
            asyncio.Task[None]:
        """Carry out ``action`` in the background (it outlives the request that asked). One
        action at a time per VM on this node: an action already moved into its passing state
        (``begun``) runs after the one under way; one not yet begun is left to it."""
        running = self._tasks.get(d.id)
        busy = running is not None and not running.done()
        if busy and not begun:
            assert running is not None
            return running
        work = self._carry_out(d, action, who, begun)
        if busy:
            assert running is not None
            work = _after(running, work)
        task = asyncio.create_task(work, name=f"vm-{d.id}-{action.value}")
        self._tasks[d.id] = task
        task.add_done_callback(lambda t: self._tasks.pop(d.id, None)
                               if self._tasks.get(d.id) is t else None)
        return task

    async def _carry_out(self, d: Desktop, action: Action, who: str, begun: bool) -> None:
        passing = ACTIONS[action].passing
        try:
            if not begun:
                await self._begin(d, VmState(_vm(d).state), action)
            await self._operate(d, action)
        except Conflict as exc:
            log.info("[desktop=%s] %s not carried out: %s", d.name, action.value, exc.reason)
            return
        except (HypervisorError, TimeoutError) as exc:
            reason = exc.reason if isinstance(exc, HypervisorError) else (
                f"its screen did not answer within {self._settings.start_timeout:g} s")
            if action in (Action.START, Action.REBOOT):
                with contextlib.suppress(HypervisorError):  # not left half started
                    await self._provider().shutdown(self._spec(d), 0)
            with contextlib.suppress(Conflict):
                await self._move(d, passing, Failed(action, reason))
            await self._audit.record(AuditKind.VM_STATE, desktop=d.name,
                                     detail=f"desktop VM {action.value} failed ({who}): {reason}")
            return
        except BaseException:
            log.exception("[desktop=%s] %s failed", d.name, action.value)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._move(d, passing, Failed(
                    action, f"{action.value} stopped by an internal error")))
            raise
        finally:
            self._progress.pop(d.id, None)
        if action is Action.DELETE:
            await self._store.close_vm_run(d.id, self._clock())
            await self._store.delete_desktop(d.id)
            await self._audit.record(AuditKind.VM_STATE, desktop=d.name,
                                     detail=f"desktop VM deleted with its volumes ({who})")
            return
        with contextlib.suppress(Conflict):
            await self._move(d, passing, Done(action))
        if who in MODE_NAMES.values():
            await self._audit.record(AuditKind.VM_STATE, desktop=d.name,
                                     detail=f"desktop VM {ACTIONS[action].done.value} by its"
                                            f" running mode ({who})")

    async def _operate(self, d: Desktop, action: Action) -> None:
        spec = self._spec(d)
        provider = self._provider()
        timeout = self._settings.start_timeout
        match action:
            case Action.START:
                began = self._clock()
                estimate = await self.estimate(d.id)
                self._progress[d.id] = Progress("starting", began, estimate)
                await provider.start(spec)
                self._progress[d.id] = Progress("screen", began, estimate)
                await provider.wait_screen(spec, timeout)
                await self._store.record_vm_start(d.id, began, self._clock() - began)
            case Action.STOP:
                await provider.shutdown(spec, self._settings.stop_timeout)
            case Action.REBOOT:
                await provider.shutdown(spec, self._settings.stop_timeout)
                await provider.start(spec)
                await provider.wait_screen(spec, timeout)
            case Action.REBUILD:
                await provider.shutdown(spec, self._settings.stop_timeout)
                await provider.rebuild(spec)
            case Action.DELETE:
                await provider.delete(spec)
            case Action.CREATE:
                await provider.create(spec)

    # keeping in step ---------------------------------------------------------------------------
    async def reconcile(self) -> None:
        """Compare every VM with its hypervisor (the truth), then apply the running modes:
        AlwaysOn ones that stopped are started again, idle AutoStop ones are stopped."""
        vms = await self._store.list_desktop_vms()
        by_hypervisor: dict[str, list[Desktop]] = {}
        for d in vms:
            by_hypervisor.setdefault(_vm(d).hypervisor, []).append(d)
        for name, desktops in by_hypervisor.items():
            try:
                seen = await self._provider().observe(name)
            except HypervisorUnreachable as exc:
                if self._unreachable.get(name) != exc.reason:
                    log.warning("hypervisor %s cannot be reached: %s", name, exc.reason)
                self._unreachable[name] = exc.reason
                continue
            except HypervisorError as exc:
                log.warning("hypervisor %s: %s", name, exc.reason)
                continue
            if self._unreachable.pop(name, None) is not None:
                log.info("hypervisor %s can be reached again", name)
            for d in desktops:
                if self.busy(d.id):
                    continue  # this node is carrying out an action on it
                observation = seen.get(d.id)
                await self._observed(d, observation.seen if observation else Seen.MISSING,
                                     observation.detail if observation else "")
        for d in await self._store.list_desktop_vms():
            await self._apply_mode(d)

    async def _observed(self, d: Desktop, seen: Seen, detail: str) -> None:
        vm = _vm(d)
        state = VmState(vm.state)
        event: Observed | Abandoned = Observed(seen)
        if state in PASSING and self._clock() - vm.since > self._abandoned_after():
            event = Abandoned(seen)
        try:
            after = await self._move(d, state, event)
        except (Conflict, IllegalMove):
            return
        if after is not state:
            words = detail or seen.value
            await self._audit.record(AuditKind.VM_STATE, desktop=d.name,
                                     detail=f"desktop VM {state.value} -> {after.value}: the"
                                            f" hypervisor says {words}")

    def _abandoned_after(self) -> float:
        return self._settings.start_timeout + 2 * self._settings.stop_timeout + 30

    async def _apply_mode(self, d: Desktop) -> None:
        vm = _vm(d)
        if self.busy(d.id) or self._unreachable.get(vm.hypervisor) is not None:
            return
        if vm.mode == ALWAYS_ON and vm.state == VmState.STOPPED and not d.maintenance:
            self._spawn(d, Action.START, "AlwaysOn")
        elif vm.mode == AUTO_STOP and vm.state == VmState.RUNNING and await self._idle(d):
            self._spawn(d, Action.STOP, "AutoStop")

    async def _idle(self, d: Desktop) -> bool:
        """No session on it, and none for its AutoStop time (counted from the last session's
        end, or from when it started running)."""
        vm = _vm(d)
        open_sessions, last_end = await self._store.desktop_last_use(d.id)
        if open_sessions:
            return False
        idle_since = max(last_end or 0.0, vm.since)
        return self._clock() - idle_since >= vm.auto_stop_seconds

    def _session_ended(self, desktop_id: int) -> None:
        """A desktop's last session on this node ended: look at it again once its AutoStop
        time has passed (the periodic reconcile would too, later)."""
        old = self._idle_checks.pop(desktop_id, None)
        if old is not None:
            old.cancel()

        async def check() -> None:
            self._idle_checks.pop(desktop_id, None)
            with contextlib.suppress(NotFound):
                await self._apply_mode(await self.desktop(desktop_id))

        async def later() -> None:
            d = await self._store.get_desktop(desktop_id)
            if d is None or d.vm is None or d.vm.mode != AUTO_STOP:
                return
            loop = asyncio.get_running_loop()
            self._idle_checks[desktop_id] = loop.call_later(
                d.vm.auto_stop_seconds + 0.5, lambda: self._keep(check()))

        self._keep(later())

    def _keep(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_failure)

    async def keep_in_step(self) -> None:
        """Reconcile now and then every ``reconcile_seconds`` (the application runs this)."""
        while True:
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconciling desktop VMs failed")
            await asyncio.sleep(self._settings.reconcile_seconds)

    async def close(self) -> None:
        for handle in self._idle_checks.values():
            handle.cancel()
        self._idle_checks.clear()
        tasks = [t for t in self._tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _record(self, actor: Actor, d: Desktop, detail: str, *,
                      kind: AuditKind = AuditKind.VM) -> None:
        await self._audit.record(kind, user=actor.name if actor.user_id is not None else None,
                                 desktop=d.name, client_ip=actor.client_ip,
                                 detail=actor.by(detail))


def _vm(d: Desktop) -> DesktopVm:
    if d.vm is None:
        raise NotFound("no such desktop VM")
    return d.vm


def _check_mode(mode: str, auto_stop_seconds: int) -> None:
    if mode not in RUNNING_MODES:
        raise BadRequest(f"running modes are {', '.join(RUNNING_MODES)}")
    if isinstance(auto_stop_seconds, bool) or not isinstance(auto_stop_seconds, int) \
            or not 1 <= auto_stop_seconds <= MAX_AUTO_STOP_SECONDS:
        raise BadRequest(f"the AutoStop time is 1 to {MAX_AUTO_STOP_SECONDS} seconds")


def mode_words(mode: str, auto_stop_seconds: int) -> str:
    """ "AlwaysOn", or "AutoStop after 60 min" (seconds when it is not whole minutes)."""
    if mode == ALWAYS_ON:
        return MODE_NAMES[ALWAYS_ON]
    minutes, seconds = divmod(auto_stop_seconds, 60)
    return f"AutoStop after {minutes} min" if not seconds else (
        f"AutoStop after {auto_stop_seconds} s")


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("desktop VM check failed", exc_info=task.exception())


async def _after(first: asyncio.Task[None], then: Coroutine[Any, Any, None]) -> None:
    """``then``, once ``first`` has ended (however it ended)."""
    try:
        await asyncio.wait([first])
    except BaseException:
        then.close()
        raise
    await then
