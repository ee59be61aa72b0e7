import { createHash, timingSafeEqual } from "node:crypto";
import type { Config } from "./config.ts";

/** An inbound key as the router keeps it: its name for logs and stats, and its digest. */
interface KnownKey {
  name: string;
  digest: Buffer;
}

function digest(text: string): Buffer {
  return createHash("sha256").update(text).digest();
}

/** The key a client presented: `Authorization: Bearer <key>` or `x-api-key: <key>`. */
export function presentedKeys(headers: Headers): string[] {
  const keys: string[] = [];
  const authorization = headers.get("authorization");
  const bearer = authorization?.match(/^Bearer\s+(.+)$/i)?.[1]?.trim();
  if (bearer) keys.push(bearer);
  const apiKey = headers.get("x-api-key")?.trim();
  if (apiKey) keys.push(apiKey);
  return keys;
}

/**
 * Checks inbound keys. Digests make every comparison the same length, and every configured key
 * is compared, so the time taken says nothing about how close a guess was.
 */
export class Gate {
  readonly enabled: boolean;
  readonly protectPages: boolean;
  #keys: KnownKey[];

  constructor(auth: Config["auth"]) {
    this.#keys = auth.api_keys.map(({ name, key }) => ({ name, digest: digest(key) }));
    this.enabled = this.#keys.length > 0;
    this.protectPages = auth.protect_pages;
  }

  /** The name of the key these headers present, or null when none matches. */
  identify(headers: Headers): string | null {
    let found: string | null = null;
    for (const presented of presentedKeys(headers)) {
      const candidate = digest(presented);
      for (const key of this.#keys) {
        if (timingSafeEqual(candidate, key.digest) && found === null) found = key.name;
      }
    }
    return found;
  }
}
