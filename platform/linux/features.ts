// What the running kernel (or sandbox) lets the Linux backend do, as learned
// at run time. Each capability starts as assumed and is cleared by the one
// call that finds it refused, never set back; the record is per backend, so
// an option (restoreInPlace) or a refusal changes only that backend.

/** The kernel capabilities one backend has learned; each field is cleared in one place only. */
export interface Features {
  /** memfd_create takes MFD_NOEXEC_SEAL (Linux 6.3+). Learned by makeLayer (layers.ts). */
  noexecSeal: boolean;
  /** vmsplice(2) and splice(2) copy memory into a layer. Learned by Writer.write (writer.ts). */
  splice: boolean;
  /** copy_file_range(2) copies between memory files. Learned by copyFileToFile (writer.ts). */
  fileCopy: boolean;
  /** process_madvise(2) takes MADV_DONTNEED for this process (Linux 6.15+). Learned by dropRanges (drop.ts). */
  vectorAdvise: boolean;
  /** process_madvise(2) takes MADV_POPULATE_WRITE for this process. Learned by Dropper.privatize (drop.ts). */
  vectorPopulate: boolean;
  /** madvise(2) takes MADV_POPULATE_WRITE (Linux 5.14+). Learned by Dropper.privatize (drop.ts). */
  populate: boolean;
  /** mremap can move several mappings in one call (Linux 6.17+). Learned by restore (restore.ts), or off by option. */
  multiMove: boolean;
  /** mremap moves a shared mapping with MREMAP_DONTUNMAP (Linux 5.13+). Learned by moveAside (move-aside.ts). */
  moveAside: boolean;
}

/** Every capability assumed until refused; `multiMove` off when restores are to map in place. */
export function assumeFeatures(restoreInPlace: boolean): Features {
  return { noexecSeal: true, splice: true, fileCopy: true, vectorAdvise: true, vectorPopulate: true, populate: true, multiMove: !restoreInPlace, moveAside: true };
}
