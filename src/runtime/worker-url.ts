/**
 * A worker module's URL, from its path under src/ without the extension
 * ("runtime/blocking-worker"). In the source tree that is the .ts file; in the
 * compiled executable the build embeds each worker (an entry point of its
 * own, scripts/build.ts) under the bundle's root, src/, as .js, and every
 * module's import.meta.url is the bundle's, so the path is taken from there
 * (the bundler does not rewrite it).
 */
const compiled = import.meta.url.includes("/~BUN/") || import.meta.url.includes("/%7EBUN/") || import.meta.url.includes("/$bunfs/");

export function workerUrl(pathInSrc: string): URL {
  return compiled ? new URL(`./${pathInSrc}.js`, import.meta.url) : new URL(`../${pathInSrc}.ts`, import.meta.url);
}
