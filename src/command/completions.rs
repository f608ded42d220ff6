//! `mesh completions SHELL` and the hidden `mesh man DIR`: shell completion
//! scripts and man pages, generated from the clap definitions in
//! [`crate::cli`], so they never disagree with `--help`.

use crate::cli::Cli;
use crate::error::Error;
use clap::CommandFactory;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ManArgs {
    /// Folder the pages are written to: mesh.1 and mesh-<command>.1.
    #[arg(default_value = "target/man", value_name = "DIR")]
    pub dir: PathBuf,
}

/// Print the completion script on stdout.
pub(crate) fn run(args: &Args) -> u8 {
    let mut cmd = Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "mesh", &mut std::io::stdout());
    0
}

/// Write the man pages (atomically: each to a temp file, then renamed).
pub(crate) fn man(args: &ManArgs) -> Result<u8, Error> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| Error::local(format!("creating {}", args.dir.display()), e))?;
    let cmd = Cli::command();
    let mut pages = vec![(String::from("mesh"), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        pages.push((format!("mesh-{}", sub.get_name()), sub.clone()));
    }
    for (name, page) in pages {
        let mut roff = Vec::new();
        clap_mangen::Man::new(page.display_name(name.clone()).bin_name(name.clone()))
            .render(&mut roff)
            .map_err(|e| Error::local(format!("rendering the man page {name}"), e))?;
        let path = args.dir.join(format!("{name}.1"));
        crate::atomic::write(&path, &roff, Some(0o644))
            .map_err(|e| Error::local(format!("writing {}", path.display()), e))?;
        println!("{}", path.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_visible_command() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "mesh",
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        for sub in ["nodes", "services-up", "deploy", "care", "completions"] {
            assert!(text.contains(sub), "{sub} missing");
        }
    }

    #[test]
    fn man_pages_are_written_per_command() {
        let dir = tempfile::tempdir().unwrap();
        man(&ManArgs {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        let deploy = std::fs::read_to_string(dir.path().join("mesh-deploy.1")).unwrap();
        assert!(deploy.contains("rollback"), "{deploy}");
        assert!(dir.path().join("mesh.1").exists());
        assert!(!dir.path().join("mesh-bench.1").exists());
    }
}
