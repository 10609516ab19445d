"""Reference pipeline: a batch of image generations, fanned out, happy with most of them.

`image_batch` plans the prompts, fans out one `image_generate` child per prompt (each with its
own timeout and attempts, a few at a time), and reports per-image results and "12 of 14
succeeded". Each child calls an OpenAI-compatible images API (`POST {base}/images/generations`,
`response_format: b64_json`) under the shared `images` limit and stores the picture as a job
artifact the page links to. With no image API configured, the batch says so and skips the
generations: nothing is faked.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints
from pydantic_settings import BaseSettings, SettingsConfigDict

from handlers.provider import ProviderError, post_json
from queues import Contract
from worker import Context, Limit, Permanent, handler

MAX_IMAGE_BYTES: Final = 10 * 1024 * 1024
# --8<-- [start:limit_declared]
IMAGES: Final = Limit("images", concurrency=4)  # generations at once, across all workers
# --8<-- [end:limit_declared]
Prompt = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
Size = Literal["256x256", "512x512", "1024x1024"]
SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png", "png"),
    (b"\xff\xd8\xff", "image/jpeg", "jpg"),
)


class ImageApiSettings(BaseSettings):
    """The images API: PGMQ_WORKER_IMAGE_BASE_URL (e.g. https://api.openai.com/v1), _MODEL, _API_KEY."""

    model_config = SettingsConfigDict(env_prefix="PGMQ_WORKER_IMAGE_", extra="ignore")
    base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible images API, e.g. `https://api.openai.com/v1`. Unset: a batch "
        "finishes with the reason it skipped.",
    )
    model: str = Field(default="gpt-image-1", description="The image model.")
    api_key: SecretStr | None = Field(default=None, description="Sent as `Authorization: Bearer`.")
    request_timeout_s: float = Field(default=120.0, gt=0, description="Seconds per generation request.")

    @property
    def configured(self) -> bool:
        """True when a base URL is set."""
        return bool(self.base_url)


class ImageRequested(BaseModel):
    """Generate one image for `prompt`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    prompt: Prompt
    size: Size = "512x512"
    index: int = Field(default=0, ge=0, le=999)


class ImageBatchRequested(BaseModel):
    """Generate one image per prompt, a few at a time; succeed when `min_success` of them did."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompts": [
                        "a lighthouse at dawn, watercolour",
                        "a red fox in fresh snow",
                        "a tram in Lisbon, evening light",
                        "a bowl of ramen, top view",
                    ],
                    "size": "512x512",
                    "per_image_timeout": 60,
                    "max_running": 2,
                    "min_success": 0.5,
                }
            ]
        },
    )
    prompts: list[Prompt] = Field(min_length=1, max_length=50)
    size: Size = "512x512"
    per_image_timeout: float = Field(default=90.0, gt=0, le=900, description="Seconds per attempt.")
    max_attempts: int = Field(default=2, ge=1, le=10, description="Attempts per image.")
    max_running: int = Field(default=4, ge=1, le=20, description="Images generated at once.")
    min_success: float = Field(default=0.5, ge=0.0, le=1.0, description="Share that must succeed.")


IMAGE_BATCH: Final = Contract("image_batch", ImageBatchRequested)
IMAGE_GENERATE: Final = Contract("image_generate", ImageRequested)


# --8<-- [start:fan_out]
@handler(IMAGE_BATCH, max_attempts=3, timeout=60, steps=["plan", "generate", "collect"])
async def image_batch(payload: ImageBatchRequested, ctx: Context) -> dict[str, object]:
    """Fan out one generation per prompt; report each image and the summary."""
    settings = ImageApiSettings()
    plan = await ctx.step("plan", plan_images, payload, settings.configured)
    if plan["skipped"]:
        await ctx.progress(100, step="generate", detail={"skipped": plan["skipped"]})
        return {"summary": f"skipped: {plan['skipped']}", "skipped": plan["skipped"], "images": []}
    batch = await ctx.fan_out(
        "generate",
        IMAGE_GENERATE,
        plan["requests"],
        timeout=payload.per_image_timeout,
        max_attempts=payload.max_attempts,
        max_running=payload.max_running,
        deadline=payload.per_image_timeout * payload.max_attempts * len(payload.prompts) + 600,
        min_succeeded=payload.min_success,
    )
    images = [
        {
            "index": child.index,
            "prompt": plan["requests"][child.index]["prompt"],
            "status": child.status,
            "timed_out": child.timed_out,
            "attempts": child.attempts,
            **(child.result if child.ok else {"error": (child.error or {}).get("message")}),
        }
        for child in batch.children
    ]
    await ctx.progress(100, step="collect", detail={"summary": batch.summary})
    return {
        "summary": batch.summary,
        "succeeded": batch.succeeded,
        "failed": batch.failed,
        "timed_out": batch.timed_out,
        "images": images,
    }


# --8<-- [end:fan_out]


def plan_images(payload: ImageBatchRequested, configured: bool) -> dict[str, object]:
    """One request per distinct prompt (in order), or the reason the batch is skipped."""
    if not configured:
        return {"skipped": "no image API configured: set PGMQ_WORKER_IMAGE_BASE_URL", "requests": []}
    prompts = list(dict.fromkeys(payload.prompts))
    return {
        "skipped": None,
        "requests": [
            ImageRequested(prompt=p, size=payload.size, index=i).model_dump() for i, p in enumerate(prompts)
        ],
    }


# --8<-- [start:limit]
@handler(IMAGE_GENERATE, max_attempts=3, timeout=180)
async def image_generate(payload: ImageRequested, ctx: Context) -> dict[str, object]:
    """One image from the images API, stored as an artifact of this job."""
    settings = ImageApiSettings()
    if not settings.base_url:
        raise Permanent("no image API configured: set PGMQ_WORKER_IMAGE_BASE_URL")
    await ctx.progress(10, step="generate")
    async with (
        httpx.AsyncClient(timeout=settings.request_timeout_s) as client,
        ctx.limit(IMAGES),
    ):
        answer = await post_json(
            client,
            settings.base_url.rstrip("/") + "/images/generations",
            {
                "model": settings.model,
                "prompt": payload.prompt,
                "size": payload.size,
                "n": 1,
                "response_format": "b64_json",
            },
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            what="images API",
        )
        data = await image_bytes(client, answer)
    content_type, extension = sniff(data)
    await ctx.progress(90, step="store")
    url = await ctx.artifact(f"image-{payload.index}.{extension}", data, content_type)
    return {"url": url, "bytes": len(data), "content_type": content_type}


# --8<-- [end:limit]


async def image_bytes(client: httpx.AsyncClient, answer: dict[str, object]) -> bytes:
    """The image in an images API answer: `data[0].b64_json`, or fetched from `data[0].url`."""
    items = answer.get("data")
    if not isinstance(items, list) or not items or not isinstance(items[0], dict):
        raise ProviderError("images API: the answer has no data[0]")
    first = items[0]
    if isinstance(first.get("b64_json"), str):
        try:
            data = base64.b64decode(first["b64_json"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProviderError("images API: data[0].b64_json is not base64") from exc
    elif isinstance(first.get("url"), str):
        response = await client.get(first["url"])
        if response.status_code != 200:
            raise ProviderError(f"images API: fetching data[0].url gave HTTP {response.status_code}")
        data = response.content
    else:
        raise ProviderError("images API: data[0] has neither b64_json nor url")
    if len(data) > MAX_IMAGE_BYTES:
        raise Permanent(f"images API: the image is {len(data)} bytes, over {MAX_IMAGE_BYTES}")
    return data


def sniff(data: bytes) -> tuple[str, str]:
    """Content type and file extension from the image's first bytes (PNG, JPEG or WebP)."""
    for magic, content_type, extension in SIGNATURES:
        if data.startswith(magic):
            return content_type, extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp", "webp"
    raise ProviderError("images API: the answer is not a PNG, JPEG or WebP image")
