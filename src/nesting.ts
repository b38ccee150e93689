/**
 * Nesting depth of YAML and JSON text, bounded before the text is parsed. A parser builds one node
 * per level: 240 KB of "[" cost the yaml library ~1 s and 235 MiB (composing recurses per level),
 * and 120k levels of "- - - ..." fit in a 256 KiB binding file. No natsbind input (bindings,
 * natsbind.yaml, webhook bodies, key store and status files) needs more than a dozen levels, so
 * anything deeper than MAX_NESTING_DEPTH is refused first: by a character scan, then by the yaml
 * library's lexer and CST parser stopped at the level where it goes too deep.
 */
import { Lexer, Parser } from "yaml";

export const MAX_NESTING_DEPTH = 64;

/** A problem ("nests deeper than 64 levels at line 3") or undefined when within the bound. */
export type NestingProblem = string | undefined;

function tooDeep(max: number, line: number): string {
  return `nests deeper than ${max} levels at line ${line}; not parsed`;
}

/** JSON: "[" and "{" outside strings. */
export function jsonNestingProblem(text: string, max = MAX_NESTING_DEPTH): NestingProblem {
  let depth = 0;
  let line = 1;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0a) line++;
    if (inString) {
      if (c === 0x5c)
        i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) {
      inString = true;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return tooDeep(max, line);
    } else if ((c === 0x5d || c === 0x7d) && depth > 0) {
      depth--;
    }
  }
  return undefined;
}

const SPACE = 0x20;
const NEWLINE = 0x0a;
const CR = 0x0d;
const isBlank = (c: number): boolean => c === SPACE || c === 0x09 || c === CR;
const DOCUMENT_MARKER = /^(?:---|\.\.\.)(?:[ \t\r]|$)/;
/** A block scalar header at the end of a line's content: "|", ">", with indentation/chomping. */
const BLOCK_SCALAR_HEADER = /(?:^|[\s:-])[|>][0-9+-]{0,2}$/;

/**
 * The quick pass: one loop over the characters (~1 ms for 256 KiB), for what even the yaml lexer
 * and CST parser are slow on ("key: - - - ...", 120k times: 1.7 s and 270 MiB, without nesting in
 * the CST). It over-approximates: flow collections count two levels ("[a: b]" holds a one-pair
 * mapping), block levels come from indentation plus every "- ", "? " and ": " on a line; quoted
 * scalars, comments and block scalar content are skipped only where a token can start. Crafted
 * input can still mislead it: the exact pass follows.
 */
function quickYamlNestingProblem(text: string, max: number): NestingProblem {
  const n = text.length;
  let flow = 0;
  let quote = 0;
  const blocks: number[] = [];
  let scalarParent = -1;
  let expect = true;
  let line = 0;
  let at = 0;
  while (at < n) {
    line++;
    const newline = text.indexOf("\n", at);
    const end = newline === -1 ? n : newline;
    let first = at;
    while (first < end && text.charCodeAt(first) === SPACE) first++;
    const indent = first - at;
    const blankLine = first >= end || isBlank(text.charCodeAt(first)) || text.charCodeAt(first) === 0x23;
    if (scalarParent >= 0 && quote === 0 && flow === 0) {
      if (blankLine || indent > scalarParent) {
        at = end + 1;
        continue;
      }
      scalarParent = -1;
    }
    let i = first;
    if (flow === 0) expect = true;
    if (indent === 0 && quote === 0 && DOCUMENT_MARKER.test(text.slice(at, at + 4))) {
      flow = 0;
      blocks.length = 0;
      i += 3;
    }
    if (quote === 0 && flow === 0 && !blankLine) {
      while (blocks.length > 0 && blocks[blocks.length - 1]! >= indent) blocks.pop();
      blocks.push(indent);
    }
    let lastContent = i;
    // Leading "- " / "? " chain ("- - key: |"): the last indicator's column and the token after it.
    let chain = true;
    let lastIndicator = -1;
    let afterChain = -1;
    for (; i < end; i++) {
      const c = text.charCodeAt(i);
      if (quote !== 0) {
        if (quote === 0x22 && c === 0x5c) i++;
        else if (c === quote) {
          if (quote === 0x27 && i + 1 < end && text.charCodeAt(i + 1) === 0x27) i++;
          else quote = 0;
        }
        lastContent = i + 1;
        continue;
      }
      const previous = i === first ? SPACE : text.charCodeAt(i - 1);
      // A comment; not in flow context, where a "#" the parser reads as text would hide brackets.
      if (c === 0x23 && flow === 0 && isBlank(previous)) break;
      if (isBlank(c)) continue;
      lastContent = i + 1;
      const next = i + 1 < end ? text.charCodeAt(i + 1) : NEWLINE;
      const indicator = (c === 0x2d || c === 0x3f || c === 0x3a) && (isBlank(next) || next === NEWLINE);
      if (chain) {
        if (indicator && c !== 0x3a) lastIndicator = i - at;
        else {
          chain = false;
          afterChain = i - at;
        }
      }
      if (flow === 0 && indicator && (c === 0x3a || isBlank(previous))) {
        blocks.push(i + 1 - at);
        if (blocks.length > max) return tooDeep(max, line);
        // "- " and "? " inside a plain scalar ("a - b") are text: counted, but no token follows.
        if (c === 0x3a) expect = true;
        continue;
      }
      // Node properties (anchor, tag) come before a node: a token may still start after them.
      if ((c === 0x26 || c === 0x21) && expect) {
        while (i + 1 < end && !isBlank(text.charCodeAt(i + 1))) i++;
        lastContent = i + 1;
        continue;
      }
      if ((c === 0x22 || c === 0x27) && expect && !(flow > 0 && previous === 0x3a)) {
        quote = c;
        expect = false;
      } else if ((c === 0x5b || c === 0x7b) && (flow > 0 || expect)) {
        flow++;
        expect = true;
        if (2 * flow + blocks.length > max) return tooDeep(max, line);
      } else if (c === 0x2c && flow > 0) {
        expect = true;
      } else if ((c === 0x5d || c === 0x7d) && flow > 0) {
        flow--;
        expect = false;
      } else {
        expect = false;
      }
    }
    if (
      quote === 0 &&
      flow === 0 &&
      !blankLine &&
      BLOCK_SCALAR_HEADER.test(text.slice(Math.max(first, lastContent - 8), lastContent))
    ) {
      // Content belongs to the scalar while indented deeper than the node holding it: the line
      // ("key: |"), the sequence whose entry it is ("- - |": the inner one), or the mapping in
      // that entry ("- key: |").
      const header = text.slice(first, lastContent).search(/[|>][0-9+-]{0,2}$/) + indent;
      if (lastIndicator < 0) scalarParent = indent;
      else scalarParent = afterChain === header ? lastIndicator : afterChain;
    }
    at = end + 1;
  }
  return undefined;
}

/**
 * The exact pass: the yaml library's own lexer and CST parser, fed one token at a time, stopped as
 * soon as the parser's stack of open nodes (document, collections, pairs: the path to where it
 * is) is deeper than `max`. What it would build, error recovery included, is measured rather than
 * guessed, and nothing past that point is lexed or built. The composer, which recurses per level
 * and is where the time and memory went, never runs on a refused input.
 */
function parsedNestingProblem(text: string, max: number): NestingProblem {
  const parser = new Parser();
  let line = 1;
  for (const token of new Lexer().lex(text)) {
    for (const _ of parser.next(token)) {
      // documents are dropped: only the depth is wanted
    }
    // A flow collection counts two: "[a: b]" and "[? a]" hold a one-pair mapping in the CST's item.
    let depth = 0;
    for (const node of parser.stack) depth += node.type === "flow-collection" ? 2 : 1;
    if (depth > max) return tooDeep(max, line);
    for (let i = token.indexOf("\n"); i !== -1; i = token.indexOf("\n", i + 1)) line++;
  }
  return undefined;
}

/** YAML (any number of documents): the quick pass, then the exact one. */
export function yamlNestingProblem(text: string, max = MAX_NESTING_DEPTH): NestingProblem {
  return quickYamlNestingProblem(text, max) ?? parsedNestingProblem(text, max);
}
