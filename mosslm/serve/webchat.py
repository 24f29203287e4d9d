"""The web chat: its static page at `/` and its REST API under `/api/` (docs/web-api.md).

Who is asking comes from the session cookie (sessions.py), an `Authorization:
Bearer` key, or, on an open server, is the one local user 0. Conversations and
feedback go to the serving database (conversations.py), except for keys made
with logging off. The streamed reply itself is in webchat_stream.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from . import conversations as store_api
from .errors import APIError
from .keys import AuthError, KeyInfo, authenticate
from .sessions import COOKIE, login, logout, session_key

WEB_DIR = Path(__file__).with_name("web")
LOCAL_USER = 0
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@dataclass(frozen=True)
class User:
    id: int                   # the key's id; 0 on an open server
    key: KeyInfo | None
    logging: bool             # False: nothing of this user's conversations is stored
    name: str
    cookie: bool              # identified by the session cookie (state changes then need JSON, see _csrf)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginBody(Strict):
    code: str = Field(max_length=200)


class Settings(Strict):
    plugins: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    system_prompt: str | None = Field(None, max_length=8000)


class TitleBody(Strict):
    title: str | None = Field(None, max_length=500)


class FeedbackBody(Strict):
    rating: Literal["up", "down"] | None = None
    better_answer: str | None = Field(None, max_length=100_000)
    comment: str | None = Field(None, max_length=10_000)


MAX_MESSAGE_CHARS = 32_000


class HistoryAssistant(Strict):
    content: str = Field(max_length=200_000)
    plugin: dict | None = None


class HistoryTurn(Strict):
    user: str = Field(max_length=200_000)
    assistant: HistoryAssistant


class ChatBody(Strict):
    conversation_id: str | None = None
    parent_id: str | None = None
    content: str | None = Field(None, max_length=MAX_MESSAGE_CHARS)
    regenerate: str | None = None
    settings: Settings | None = None
    history: list[HistoryTurn] | None = Field(None, max_length=500)


def _auth_error(e: AuthError) -> APIError:
    return APIError(e.status, e.message, code=e.code)


def current_user(server, request: Request) -> User:
    if server.open_access:
        return User(LOCAL_USER, None, True, "local", False)
    header = request.headers.get("authorization")
    try:
        if header:
            key, cookie = authenticate(server.store, header), False
        else:
            key, cookie = session_key(server.store, request.cookies.get(COOKIE)), True
    except AuthError as e:
        raise _auth_error(e) from None
    return User(key.id, key, key.logging, key.name, cookie)


def _csrf(request: Request, user: User) -> None:
    """A cookie-authenticated POST must be JSON: a cross-site HTML form cannot send that (and
    PUT/PATCH/DELETE cannot come cross-site at all without CORS, which this server never allows)."""
    if user.cookie and request.method == "POST":
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise APIError(415, "send the request as Content-Type: application/json", code="json_required")


def default_settings(server) -> dict:
    """The server's own settings: all its plugins, its sampling defaults (until the model has
    loaded: the engine's usual ones)."""
    params = getattr(server.base, "params", None)
    return {"plugins": list(server.base.plugins) if server.base is not None else [],
            "temperature": getattr(params, "temperature", 0.7), "max_tokens": getattr(params, "max_new_tokens", 512),
            "system_prompt": None}


def settings_of(server, user: User, override: Settings | None = None) -> dict:
    """The user's generation settings: server defaults, then what they stored, then `override`,
    checked against what this server has."""
    out = default_settings(server)
    have = list(out["plugins"])
    if user.logging and server.store is not None:
        out.update({k: v for k, v in store_api.get_settings(server.store, user.id).items() if k in out})
    if override is not None:
        out.update(override.model_dump(exclude_unset=True))
    out["plugins"] = [p for p in (out["plugins"] or []) if p in have]
    out["max_tokens"] = min(int(out["max_tokens"]), server.config.max_tokens_cap)
    return out


def config_of(server) -> dict:
    moderation = server.moderator.mode if server.moderator is not None else "off"
    defaults = default_settings(server)
    return {"model": server.model_name, "auth": "none" if server.open_access else "keys",
            "plugins": defaults["plugins"], "defaults": defaults, "moderation": moderation,
            "max_tokens_cap": server.config.max_tokens_cap}


def me_of(server, user: User) -> dict:
    return {**config_of(server), "user": {"id": user.id, "name": user.name, "logging": user.logging},
            "settings": settings_of(server, user)}


@contextmanager
def found():
    """The store's NotFound (no such row, or another user's) as the API's 404."""
    try:
        yield
    except store_api.NotFound as e:
        raise APIError(404, str(e), code="not_found") from None


def add_web_chat(app: FastAPI, server) -> None:
    """Mount the page and the /api/ routes on `app`."""
    from .webchat_stream import Generations, chat_stream

    router = APIRouter(prefix="/api")
    generations = Generations()
    if server.store is not None:
        store_api.mark_interrupted(server.store)  # replies cut by a dead server: incomplete

    def user_for(request: Request) -> User:
        user = current_user(server, request)
        _csrf(request, user)
        return user

    def stored(user: User) -> bool:
        return user.logging and server.store is not None

    def own_store(user: User, what: str):
        """The database, for a user whose rows are kept there; else `what` is not found."""
        if not stored(user):
            raise store_api.NotFound(f"no {what}")
        return server.store

    @router.get("/config")
    def get_config():
        return config_of(server)

    @router.post("/login")
    def do_login(body: LoginBody, request: Request):
        if server.open_access:
            user = User(LOCAL_USER, None, True, "local", False)
            return me_of(server, user)
        try:
            token, key, expires = login(server.store, body.code, server.config.session_days)
        except AuthError as e:
            raise _auth_error(e) from None
        response = JSONResponse(me_of(server, User(key.id, key, key.logging, key.name, True)))
        response.set_cookie(COOKIE, token, max_age=int(server.config.session_days * 86400), path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    @router.post("/logout")
    def do_logout(request: Request):
        if not server.open_access:
            logout(server.store, request.cookies.get(COOKIE))
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE, path="/")
        return response

    @router.get("/me")
    def me(request: Request):
        return me_of(server, user_for(request))

    @router.get("/settings")
    def get_settings(request: Request):
        return settings_of(server, user_for(request))

    @router.put("/settings")
    def put_settings(body: Settings, request: Request):
        user = user_for(request)
        merged = settings_of(server, user, body)
        unknown = [p for p in (body.plugins or []) if p not in merged["plugins"]]
        if unknown:
            raise APIError(400, f"this server has no plugin {', '.join(unknown)}", "plugins", "unknown_plugin")
        if stored(user):
            store_api.put_settings(server.store, user.id, merged)
        return merged

    @router.get("/conversations")
    def list_conversations(request: Request):
        user = user_for(request)
        return {"data": store_api.list_conversations(server.store, user.id) if stored(user) else []}

    @router.post("/conversations", status_code=201)
    def create_conversation(request: Request, body: TitleBody | None = None):
        user = user_for(request)
        if not stored(user):
            raise APIError(409, "logging is off for this key: conversations stay in your browser", code="logging_off")
        return store_api.create_conversation(server.store, user.id, body.title if body else None)

    @router.get("/conversations/{cid}")
    def get_conversation(cid: str, request: Request):
        user = user_for(request)
        with found():
            store = own_store(user, f"conversation {cid!r}")
            return {**store_api.get_conversation(store, user.id, cid), "messages": store_api.messages(store, user.id, cid)}

    @router.patch("/conversations/{cid}")
    def rename(cid: str, body: TitleBody, request: Request):
        user = user_for(request)
        if not body.title or not body.title.strip():
            raise APIError(400, "a title cannot be empty", "title")
        with found():
            return store_api.rename_conversation(own_store(user, f"conversation {cid!r}"), user.id, cid, body.title)

    @router.delete("/conversations/{cid}")
    def delete(cid: str, request: Request):
        user = user_for(request)
        with found():
            store_api.delete_conversation(own_store(user, f"conversation {cid!r}"), user.id, cid)
        return {"ok": True}

    @router.post("/chat")
    async def chat(body: ChatBody, request: Request):
        user = user_for(request)
        return await chat_stream(server, generations, user, body, request, stored(user))

    @router.post("/messages/{mid}/stop")
    def stop(mid: str, request: Request):
        user = user_for(request)
        if not generations.stop(mid, user.id):
            with found():  # finished already: fine, if it is theirs
                store_api.get_message(own_store(user, f"message {mid!r}"), user.id, mid)
        return {"ok": True}

    @router.put("/messages/{mid}/feedback")
    def feedback(mid: str, body: FeedbackBody, request: Request):
        user = user_for(request)
        if not stored(user):  # consent: nothing of theirs is kept
            return {**body.model_dump(), "updated_at": None, "stored": False}
        with found():
            return store_api.set_feedback(server.store, user.id, mid, body.rating, body.better_answer, body.comment)

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB_DIR / "index.html", headers=_page_headers())

    app.mount("/static", StaticFiles(directory=WEB_DIR, check_dir=False), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        if request.url.path.startswith("/api/") and not request.headers.get("authorization"):
            try:  # before the body is read: a cross-site form never gets as far as validation
                _csrf(request, User(LOCAL_USER, None, True, "", COOKIE in request.cookies))
            except APIError as e:
                return e.response()
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if request.url.path == "/" or request.url.path.startswith("/static/"):
            for k, v in _page_headers().items():
                response.headers.setdefault(k, v)
        return response


def _page_headers() -> dict:
    return {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY"}
