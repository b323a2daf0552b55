"""Retry cloud API calls that failed for a transient reason, and nothing else.

Transient: HTTP 5xx and 429 answers, a refused or reset connection, no answer
in time. A 4xx answer (bad request, not found, quota, auth) is raised at
once: retrying it cannot help. Waits are random-exponential (jitter, so many clients do not
retry in step) and every retry loop stops after a number of attempts and
before a time budget runs out. When it gives up, it raises
:class:`~astrostack.errors.CloudUnreachable` (no answer) or
:class:`~astrostack.errors.CloudError` (error answers) with one line naming the
request and the last status.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import Any, Callable, Optional, TypeVar

import requests
from keystoneauth1.exceptions import ClientException as KsaClientException
from keystoneauth1.exceptions import connection as ksa_connection
from keystoneauth1.exceptions import http as ksa_http
from openstack import exceptions as os_exc
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from astrostack.errors import CloudError, CloudUnreachable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ATTEMPTS = 5
DEFAULT_MAX_WAIT_S = 8.0
DEFAULT_BUDGET_S = 60.0
TOO_MANY_REQUESTS = 429
_URL = re.compile(r"https?://[^\s'\"()]+")

# Connection failures worth a retry: the server was not listening, dropped us, or
# did not answer in time (an API waiting on a restarting Keystone does that).
# SSL errors are ConnectionErrors in both requests and keystoneauth but are not transient.
_CONNECTION_ERRORS = (
    ConnectionResetError,
    ConnectionRefusedError,
    TimeoutError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ksa_connection.ConnectFailure,
    ksa_connection.ConnectTimeout,
)
_NOT_TRANSIENT = (requests.exceptions.SSLError, ksa_connection.SSLError)
# Whatever openstacksdk, keystoneauth or requests raise: the errors a cloud call
# turns into one of ours (CloudError) at the module that made it.
SDK_ERRORS = (os_exc.SDKException, KsaClientException, requests.exceptions.RequestException)


def http_status(exc: BaseException) -> Optional[int]:
    """The HTTP status carried by an openstacksdk, keystoneauth or requests error."""
    for attribute in ("status_code", "http_status"):  # openstacksdk, keystoneauth
        status = getattr(exc, attribute, None)
        if isinstance(status, int) and status:
            return status
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def is_connection_failure(exc: BaseException) -> bool:
    return isinstance(exc, _CONNECTION_ERRORS) and not isinstance(exc, _NOT_TRANSIENT)


def is_transient(exc: BaseException) -> bool:
    """HTTP 5xx / 429 answers, refused or reset connections, timeouts."""
    if is_connection_failure(exc):
        return True
    if isinstance(exc, (requests.exceptions.HTTPError, ksa_http.HttpError)):
        status = http_status(exc)
        return status is not None and (status >= 500 or status == TOO_MANY_REQUESTS)
    return False


def describe_request(exc: BaseException) -> str:
    """``GET http://…`` when the error knows its request, else ``the request``."""
    request = getattr(exc, "request", None)
    method = getattr(exc, "method", None) or getattr(request, "method", None)
    url = getattr(exc, "url", None) or getattr(request, "url", None)
    if url is None:
        response = getattr(exc, "response", None)
        url = getattr(response, "url", None)
    if method and url:
        return f"{method} {url}"
    if url:
        return url
    named = _URL.search(str(exc))  # keystoneauth's connection errors name only the URL, in their text
    return named.group(0).rstrip(":.,") if named else " ".join(str(exc).split())[:200] or "the request"


def _give_up_error(exc: BaseException, attempts: int, waited: float) -> CloudError:
    """The one-line error raised when the retries are exhausted."""
    request = describe_request(exc)
    tries = f"after {attempts} attempt{'s' if attempts != 1 else ''} ({waited:.1f} s of waits)"
    if is_connection_failure(exc):
        return CloudUnreachable(
            f"{request}: no answer {tries} ({type(exc).__name__})",
            hint="check the cloud's API endpoint and your network",
        )
    return CloudError(
        f"{request}: HTTP {http_status(exc)} {tries}",
        hint="the cloud is overloaded or failing; try again later",
        transient=True,
    )


def _log_retry(retry_state: RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    status = http_status(exc) if exc else None
    why = f"HTTP {status}" if status else type(exc).__name__
    log.warning("%s: %s, retry %d in %.1f s", describe_request(exc) if exc else "call", why,
                retry_state.attempt_number, retry_state.upcoming_sleep)


def retrying(attempts: int = DEFAULT_ATTEMPTS, max_wait: float = DEFAULT_MAX_WAIT_S,
             budget: float = DEFAULT_BUDGET_S, sleep: Callable[[float], None] = time.sleep) -> Retrying:
    """The tenacity policy: transient errors only, jittered waits, attempts and time budget."""
    return Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=0.5, max=max_wait),
        stop=stop_after_attempt(attempts) | stop_before_delay(budget),
        sleep=sleep,
        before_sleep=_log_retry,
    )


def call_with_retry(fn: Callable[..., T], *args: Any, attempts: int = DEFAULT_ATTEMPTS,
                    max_wait: float = DEFAULT_MAX_WAIT_S, sleep: Callable[[float], None] = time.sleep,
                    **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, retrying transient cloud errors.

    At most ``attempts`` calls, waits of up to ``max_wait`` seconds between
    them, and no retry that would start after :data:`DEFAULT_BUDGET_S`.
    Non-transient errors propagate unchanged from the first failure.
    """
    policy = retrying(attempts=attempts, max_wait=max_wait, sleep=sleep)
    try:
        return policy(fn, *args, **kwargs)
    except RetryError as exhausted:
        last = exhausted.last_attempt
        exc = last.exception()
        waited = policy.statistics.get("idle_for", 0.0)
        raise _give_up_error(exc, last.attempt_number, waited) from exc


def with_retry(attempts: int = DEFAULT_ATTEMPTS, max_wait: float = DEFAULT_MAX_WAIT_S,
               sleep: Optional[Callable[[float], None]] = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator form of :func:`call_with_retry`; ``sleep`` defaults to ``time.sleep`` at call time."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            return call_with_retry(fn, *args, attempts=attempts, max_wait=max_wait,
                                   sleep=sleep or time.sleep, **kwargs)

        return wrapper

    return decorate


__all__ = ["call_with_retry", "is_transient", "retrying", "with_retry"]
