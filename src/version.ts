/** Single source for `--version` and anything that reports the build. */
export const VERSION = "0.1.0";
