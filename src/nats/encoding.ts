/**
 * The nkeys text encoding: RFC 4648 base32 (no padding) of prefix byte(s) + payload + CRC-16/XMODEM
 * (little endian). Pure functions over bytes, no key material kept.
 */

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const DECODE = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) DECODE[ALPHABET.charCodeAt(i)] = i;

export function base32Encode(bytes: Uint8Array): string {
  let out = "";
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

/** Returns undefined for any character outside the alphabet. */
export function base32Decode(text: string): Uint8Array | undefined {
  const out = new Uint8Array(Math.floor((text.length * 5) / 8));
  let bits = 0;
  let value = 0;
  let index = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    const digit = code < 128 ? DECODE[code]! : -1;
    if (digit < 0) return undefined;
    value = (value << 5) | digit;
    bits += 5;
    if (bits >= 8) {
      out[index++] = (value >>> (bits - 8)) & 255;
      bits -= 8;
    }
  }
  return out;
}

const CRC_TABLE = new Uint16Array(256);
for (let i = 0; i < 256; i++) {
  let crc = i << 8;
  for (let bit = 0; bit < 8; bit++) crc = crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1;
  CRC_TABLE[i] = crc & 0xffff;
}

export function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const byte of bytes) crc = ((crc << 8) & 0xffff) ^ CRC_TABLE[((crc >>> 8) ^ byte) & 0xff]!;
  return crc;
}

/** Appends the little-endian CRC and base32-encodes. */
export function encodeWithChecksum(raw: Uint8Array): string {
  const out = new Uint8Array(raw.length + 2);
  out.set(raw);
  const crc = crc16(raw);
  out[raw.length] = crc & 0xff;
  out[raw.length + 1] = crc >>> 8;
  return base32Encode(out);
}

/** Decodes and verifies the CRC; undefined when the text is not a well-formed nkey. */
export function decodeWithChecksum(text: string): Uint8Array | undefined {
  const raw = base32Decode(text);
  if (!raw || raw.length < 4) return undefined;
  const body = raw.subarray(0, raw.length - 2);
  const crc = raw[raw.length - 2]! | (raw[raw.length - 1]! << 8);
  return crc16(body) === crc ? body : undefined;
}

export function base64UrlEncode(data: Uint8Array | string): string {
  return Buffer.from(data).toString("base64url");
}
