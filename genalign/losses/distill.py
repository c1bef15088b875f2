"""One import point for the distillation losses (METHODS.md §8–§10): DMD / DMD2 (``dmd``), RTDMD (``rtdmd``) and
the R_dm / GNDM / GNDMR reconstruction (``gndm``, [R]). All functions are pure: tensors in, loss / tensors out."""

from .dmd import (  # noqa: F401
    DMD2_STUDENT_TIMESTEPS, GAN_HEAD_KINDS, PARAMETERISATIONS, REGRESSION_DISTANCES, BackwardSimPlan, GANHead,
    backward_simulation_plan, dmd2_student_timesteps, dmd_gradient, dmd_loss, fake_score_loss, fake_score_target,
    gan_discriminator_loss, gan_generator_loss, pseudo_huber_c, regression_loss, run_backward_simulation,
    sample_dmd_timesteps, sample_logit_normal_sigma, surrogate_loss, to_x0,
)
from .gndm import (  # noqa: F401
    GNDM_ESTIMATORS, GNDMR_WEIGHT_MODES, GNDMRWeights, check_gndm_estimator, dm_reward, gndm_pathwise_gradient,
    group_normalise, group_shared_draws, ppo_clip_loss, ppo_ratio,
)
from .rtdmd import (  # noqa: F401
    RTDMD_BP_REWARD_SCALES, ac_dmd_loss, ac_fake_loss, ac_fake_target, ac_fake_weight, consistency_h,
    consistency_two_sample_loss, reward_hinge_loss, rtdmd_last_step_loss, sample_ac_timesteps,
    sample_consistency_timesteps, subgrpo_advantages, subgrpo_steps, subinterval_coefficients, subinterval_renoise,
    weighted_reward,
)
